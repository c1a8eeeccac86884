//! Results: the Markdown tables, the target checks and the JSON file.
//!
//! Ratios compare each system with the baseline measured at the same concurrency level
//! in the same run, because absolute times drift between runs on a shared machine.
//! Trusts the measurements it is given.

use std::fmt::Write as _;

use crate::cell::CellResult;

/// The machine a run happened on, and when.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub kernel: String,
    pub date_utc: String,
    pub load_before: String,
    pub load_after: String,
    pub uid: u32,
}

/// Everything one run produced.
pub struct Run {
    pub machine: Machine,
    pub invocation: String,
    pub revision: String,
    pub seconds: f64,
    pub warmup: f64,
    pub max_calls: u64,
    pub cells: Vec<CellResult>,
}

/// One of the targets the broker is measured against.
pub struct Target {
    pub description: &'static str,
    pub measured: String,
    /// None when the run lacks a measurement the target needs.
    pub met: Option<bool>,
}

impl Run {
    pub fn find(&self, system: &str, clients: usize) -> Option<&CellResult> {
        self.cells
            .iter()
            .find(|cell| cell.system == system && cell.clients == clients)
    }

    fn baseline(&self, clients: usize) -> Option<&CellResult> {
        self.find("baseline", clients)
    }

    /// Largest monitor VmHWM after any measurement at `clients`, in KiB.
    fn monitor_hwm_at(&self, clients: usize) -> Option<u64> {
        self.cells
            .iter()
            .filter(|cell| cell.clients == clients)
            .filter_map(|cell| cell.monitor_hwm_kib)
            .max()
    }

    /// Largest parser child VmHWM sampled in any measurement, in KiB.
    fn parser_hwm(&self) -> Option<u64> {
        self.cells
            .iter()
            .filter_map(|cell| cell.parser_hwm_kib)
            .max()
    }

    /// Checks the targets the broker is meant to meet.
    pub fn targets(&self) -> Vec<Target> {
        let mut targets = Vec::new();
        let throughput_ratio = |system: &str, versus: &str, clients: usize| {
            let cell = self.find(system, clients)?;
            let reference = self.find(versus, clients)?;
            (reference.throughput > 0.0).then(|| cell.throughput / reference.throughput)
        };
        let ratio_target = |description, ratio: Option<f64>, at_least: f64| Target {
            description,
            measured: ratio.map_or("not measured".to_string(), |ratio| format!("{ratio:.2}×")),
            met: ratio.map(|ratio| ratio >= at_least),
        };

        targets.push(ratio_target(
            "fresh connection, 8 clients: throughput ≥ 0.75 × baseline",
            throughput_ratio("broker-fresh", "baseline", 8),
            0.75,
        ));
        targets.push(ratio_target(
            "fresh connection, 8 clients: throughput ≥ 3.5 × doas",
            throughput_ratio("broker-fresh", "doas", 8),
            3.5,
        ));
        targets.push(ratio_target(
            "persistent connection, 8 clients: throughput ≥ 0.90 × baseline",
            throughput_ratio("broker-persistent", "baseline", 8),
            0.90,
        ));

        let p50_gap = self
            .find("broker-persistent", 8)
            .zip(self.baseline(8))
            .map(|(cell, base)| cell.latency.p50 - base.latency.p50);
        targets.push(Target {
            description: "persistent connection, 8 clients: p50 ≤ baseline p50 + 100 µs",
            measured: p50_gap.map_or("not measured".to_string(), |gap| format!("{gap:+.0} µs")),
            met: p50_gap.map(|gap| gap <= 100.0),
        });

        for (system, description) in [
            (
                "broker-persistent",
                "persistent connection, 32 clients: p99 ≤ 3 × p50",
            ),
            (
                "broker-fresh",
                "fresh connection, 32 clients: p99 ≤ 3 × p50",
            ),
        ] {
            let ratio = self
                .find(system, 32)
                .filter(|cell| cell.latency.p50 > 0.0)
                .map(|cell| cell.latency.p99 / cell.latency.p50);
            targets.push(Target {
                description,
                measured: ratio.map_or("not measured".to_string(), |ratio| {
                    format!("p99 = {ratio:.2} × p50")
                }),
                met: ratio.map(|ratio| ratio <= 3.0),
            });
        }

        let broker_at_200: Vec<&CellResult> = self
            .cells
            .iter()
            .filter(|cell| cell.clients == 200 && cell.system.starts_with("broker"))
            .collect();
        let errors: u64 = broker_at_200.iter().map(|cell| cell.errors).sum();
        targets.push(Target {
            description: "no errors at 200 clients (every broker system)",
            measured: if broker_at_200.is_empty() {
                "not measured".to_string()
            } else {
                format!("{errors} errors")
            },
            met: (!broker_at_200.is_empty()).then_some(errors == 0),
        });

        let monitor = self.monitor_hwm_at(200);
        targets.push(Target {
            description: "monitor RSS < 10 MiB at 200 clients (VmHWM)",
            measured: monitor.map_or("not measured".to_string(), mib),
            met: monitor.map(|kib| kib < 10 * 1024),
        });
        let parser = self.parser_hwm();
        targets.push(Target {
            description: "parser child RSS < 3 MiB (largest VmHWM sampled)",
            measured: parser.map_or("not measured".to_string(), mib),
            met: parser.map(|kib| kib < 3 * 1024),
        });
        targets
    }

    /// Renders the tables and the target checks as Markdown.
    pub fn markdown(&self) -> String {
        let mut text = String::new();
        self.write_latency_table(&mut text);
        text.push('\n');
        self.write_memory_table(&mut text);
        text.push('\n');
        self.write_target_table(&mut text);
        self.write_first_errors(&mut text);
        text
    }

    /// Writes throughput, latency, errors and CPU per call of every measurement.
    fn write_latency_table(&self, text: &mut String) {
        let _ = writeln!(
            text,
            "| system | clients | calls/s | × baseline | mean ms | p50 ms | p90 ms | p99 ms \
             | max ms | p50 − baseline | errors | client CPU µs/call | server CPU µs/call \
             | CPU × baseline | other load |"
        );
        let _ = writeln!(
            text,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: \
             | ---: | ---: | ---: | ---: |"
        );
        for cell in &self.cells {
            let base = self.baseline(cell.clients);
            let ratio = base
                .filter(|base| base.throughput > 0.0)
                .map_or("–".to_string(), |base| {
                    format!("{:.2}", cell.throughput / base.throughput)
                });
            let gap = base.map_or("–".to_string(), |base| {
                format!("{:+.0} µs", cell.latency.p50 - base.latency.p50)
            });
            let total_cpu = cell.client_cpu_us + cell.server_cpu_us.unwrap_or(0.0);
            let cpu_ratio = base
                .map(|base| base.client_cpu_us + base.server_cpu_us.unwrap_or(0.0))
                .filter(|base_cpu| *base_cpu > 0.0)
                .map_or("–".to_string(), |base_cpu| {
                    format!("{:.2}", total_cpu / base_cpu)
                });
            let server = cell
                .server_cpu_us
                .map_or("–".to_string(), |cpu| format!("{cpu:.0}"));
            let _ = writeln!(
                text,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {:.0} % |",
                cell.system,
                cell.clients,
                cell.throughput,
                ratio,
                ms(cell.latency.mean),
                ms(cell.latency.p50),
                ms(cell.latency.p90),
                ms(cell.latency.p99),
                ms(cell.latency.max),
                gap,
                cell.errors,
                cell.client_cpu_us,
                server,
                cpu_ratio,
                cell.other_load * 100.0,
            );
        }
    }

    /// Writes the memory of the monitor and its parser children per broker measurement.
    fn write_memory_table(&self, text: &mut String) {
        let _ = writeln!(
            text,
            "| broker system | clients | monitor VmRSS max | monitor RssAnon max \
             | monitor VmHWM after | parser children at once | parser VmRSS max \
             | parser RssAnon max | parser VmHWM max |"
        );
        let _ = writeln!(
            text,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for cell in self
            .cells
            .iter()
            .filter(|cell| cell.monitor_hwm_kib.is_some())
        {
            let optional = |value: Option<u64>| value.map_or("–".to_string(), mib);
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell.system,
                cell.clients,
                optional(cell.monitor_rss_kib),
                optional(cell.monitor_anon_kib),
                optional(cell.monitor_hwm_kib),
                cell.parser_count
                    .map_or("–".to_string(), |count| count.to_string()),
                optional(cell.parser_rss_kib),
                optional(cell.parser_anon_kib),
                optional(cell.parser_hwm_kib),
            );
        }
    }

    fn write_target_table(&self, text: &mut String) {
        let _ = writeln!(text, "| target | measured | met |");
        let _ = writeln!(text, "| --- | --- | --- |");
        for target in self.targets() {
            let met = match target.met {
                Some(true) => "met",
                Some(false) => "not met",
                None => "not measured",
            };
            let _ = writeln!(
                text,
                "| {} | {} | {} |",
                target.description, target.measured, met
            );
        }
    }

    /// Writes the first error of each measurement that had errors, if any had.
    fn write_first_errors(&self, text: &mut String) {
        let errors: Vec<&CellResult> = self
            .cells
            .iter()
            .filter(|cell| cell.first_error.is_some())
            .collect();
        if !errors.is_empty() {
            text.push('\n');
            let _ = writeln!(text, "First error of each measurement with errors:");
            text.push('\n');
            for cell in errors {
                let _ = writeln!(
                    text,
                    "- {} at {} clients: {}",
                    cell.system,
                    cell.clients,
                    cell.first_error.as_deref().unwrap_or_default()
                );
            }
        }
    }

    /// Renders the whole run as JSON.
    pub fn json(&self) -> String {
        let machine = &self.machine;
        let mut text = String::from("{\n");
        let _ = writeln!(text, "  \"invocation\": {},", json_string(&self.invocation));
        let _ = writeln!(text, "  \"revision\": {},", json_string(&self.revision));
        let _ = writeln!(
            text,
            "  \"machine\": {{\"cpu_model\": {}, \"cpus\": {}, \"kernel\": {}, \"date_utc\": {}, \
             \"load_before\": {}, \"load_after\": {}, \"uid\": {}}},",
            json_string(&machine.cpu_model),
            machine.cpus,
            json_string(&machine.kernel),
            json_string(&machine.date_utc),
            json_string(&machine.load_before),
            json_string(&machine.load_after),
            machine.uid,
        );
        let _ = writeln!(
            text,
            "  \"plan\": {{\"seconds\": {}, \"warmup_seconds\": {}, \"max_calls\": {}}},",
            self.seconds, self.warmup, self.max_calls
        );

        text.push_str("  \"cells\": [\n");
        for (index, cell) in self.cells.iter().enumerate() {
            let separator = if index + 1 < self.cells.len() {
                ","
            } else {
                ""
            };
            let _ = writeln!(text, "    {}{separator}", cell_json(cell));
        }

        text.push_str("  ],\n  \"targets\": [\n");
        let targets = self.targets();
        for (index, target) in targets.iter().enumerate() {
            let met = target.met.map_or("null".to_string(), |met| met.to_string());
            let _ = write!(
                text,
                "    {{\"target\": {}, \"measured\": {}, \"met\": {}}}",
                json_string(target.description),
                json_string(&target.measured),
                met
            );
            text.push_str(if index + 1 < targets.len() {
                ",\n"
            } else {
                "\n"
            });
        }
        text.push_str("  ]\n}\n");
        text
    }
}

/// Renders one measurement as a JSON object.
fn cell_json(cell: &CellResult) -> String {
    let optional = |value: Option<u64>| value.map_or("null".to_string(), |v| v.to_string());
    let fields = [
        ("system", json_string(cell.system)),
        ("clients", cell.clients.to_string()),
        ("calls", cell.calls.to_string()),
        ("all_calls", cell.all_calls.to_string()),
        ("errors", cell.errors.to_string()),
        (
            "first_error",
            cell.first_error
                .as_deref()
                .map_or("null".to_string(), json_string),
        ),
        ("window_seconds", format!("{:.3}", cell.window_seconds)),
        ("throughput_per_second", format!("{:.1}", cell.throughput)),
        ("mean_us", format!("{:.1}", cell.latency.mean)),
        ("p50_us", cell.latency.p50.to_string()),
        ("p90_us", cell.latency.p90.to_string()),
        ("p99_us", cell.latency.p99.to_string()),
        ("max_us", cell.latency.max.to_string()),
        (
            "client_cpu_us_per_call",
            format!("{:.1}", cell.client_cpu_us),
        ),
        (
            "server_cpu_us_per_call",
            cell.server_cpu_us
                .map_or("null".to_string(), |cpu| format!("{cpu:.1}")),
        ),
        ("other_load", format!("{:.3}", cell.other_load)),
        ("monitor_vmrss_max_kib", optional(cell.monitor_rss_kib)),
        ("monitor_rssanon_max_kib", optional(cell.monitor_anon_kib)),
        ("monitor_vmhwm_kib", optional(cell.monitor_hwm_kib)),
        ("parser_vmrss_max_kib", optional(cell.parser_rss_kib)),
        ("parser_rssanon_max_kib", optional(cell.parser_anon_kib)),
        ("parser_vmhwm_max_kib", optional(cell.parser_hwm_kib)),
        (
            "parser_children_max",
            cell.parser_count
                .map_or("null".to_string(), |count| count.to_string()),
        ),
    ];
    let members: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("\"{name}\": {value}"))
        .collect();
    format!("{{{}}}", members.join(", "))
}

fn ms(us: f64) -> String {
    format!("{:.3}", us / 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Encodes `text` as a JSON string, quotes included.
pub fn json_string(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len() + 2);
    encoded.push('"');
    for character in text.chars() {
        match character {
            '"' => encoded.push_str("\\\""),
            '\\' => encoded.push_str("\\\\"),
            '\n' => encoded.push_str("\\n"),
            '\r' => encoded.push_str("\\r"),
            '\t' => encoded.push_str("\\t"),
            control if u32::from(control) < 0x20 => {
                let _ = write!(encoded, "\\u{:04x}", u32::from(control));
            }
            other => encoded.push(other),
        }
    }
    encoded.push('"');
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::Percentiles;

    fn cell(system: &'static str, clients: usize, throughput: f64, p50: f64) -> CellResult {
        CellResult {
            system,
            clients,
            calls: 100,
            all_calls: 120,
            errors: 0,
            first_error: None,
            window_seconds: 1.0,
            throughput,
            latency: Percentiles {
                mean: p50 * 1.2,
                p50,
                p90: p50 * 1.5,
                p99: p50 * 2.0,
                max: p50 * 4.0,
            },
            client_cpu_us: 100.0,
            server_cpu_us: None,
            other_load: 0.0,
            monitor_rss_kib: None,
            monitor_anon_kib: None,
            monitor_hwm_kib: None,
            parser_hwm_kib: None,
            parser_rss_kib: None,
            parser_anon_kib: None,
            parser_count: None,
        }
    }

    fn run(cells: Vec<CellResult>) -> Run {
        Run {
            machine: Machine {
                cpu_model: "test".to_string(),
                cpus: 2,
                kernel: "6".to_string(),
                date_utc: "2026-01-01".to_string(),
                load_before: String::new(),
                load_after: String::new(),
                uid: 33,
            },
            invocation: String::new(),
            revision: String::new(),
            seconds: 1.0,
            warmup: 0.0,
            max_calls: 10,
            cells,
        }
    }

    #[test]
    fn json_string_escapes_quotes_and_controls() {
        assert_eq!(json_string("a\"b\\c\u{1}"), "\"a\\\"b\\\\c\\u0001\"");
    }

    #[test]
    fn targets_fresh_ratio_met_and_not_met() {
        let results = run(vec![
            cell("baseline", 8, 1000.0, 900.0),
            cell("broker-fresh", 8, 800.0, 1000.0),
            cell("doas", 8, 400.0, 5000.0),
        ]);
        let targets = results.targets();
        assert_eq!(targets[0].met, Some(true));
        assert_eq!(targets[1].met, Some(false));
    }

    #[test]
    fn targets_missing_system_not_measured() {
        let results = run(vec![cell("baseline", 8, 1000.0, 900.0)]);
        let targets = results.targets();
        assert!(targets.iter().all(|target| target.met.is_none()));
    }

    #[test]
    fn targets_p50_gap_in_microseconds() {
        let results = run(vec![
            cell("baseline", 8, 1000.0, 900.0),
            cell("broker-persistent", 8, 950.0, 1050.0),
        ]);
        let gap = results
            .targets()
            .into_iter()
            .find(|target| target.description.contains("p50 ≤"))
            .unwrap();
        assert_eq!(gap.measured, "+150 µs");
        assert_eq!(gap.met, Some(false));
    }

    #[test]
    fn json_is_balanced() {
        let text = run(vec![cell("baseline", 1, 10.0, 900.0)]).json();
        assert_eq!(text.matches('{').count(), text.matches('}').count());
        assert_eq!(text.matches('[').count(), text.matches(']').count());
    }
}
