//! Build script: makes the linker pack relative relocations (DT_RELR) in the executables.
//!
//! A position-independent executable carries one relocation record for every pointer in
//! its read-only data, and the dynamic loader reads all of them in every new process. As
//! 24-byte RELA records these took 336 KiB of the broker binary; RELR packs them into
//! about 3 KiB, so each parser child reads and maps less. GNU ld 2.38 and glibc 2.36 are
//! the first to support it, and the executables then need glibc 2.36 or later to start.
//!
//! Trusted input: the environment that Cargo sets for build scripts.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SECURE_SOCKET_NO_RELR");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    // SECURE_SOCKET_NO_RELR=1 builds for an older glibc or a linker without the option.
    let disabled = std::env::var_os("SECURE_SOCKET_NO_RELR").is_some_and(|value| value != "0");
    if os == "linux" && env == "gnu" && !disabled {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
