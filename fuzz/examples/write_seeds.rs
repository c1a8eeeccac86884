//! Writes the seed corpus to `fuzz/corpus/<target>/`, replacing files of the same name
//! and leaving every other file alone.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for seed in secure_socket_fuzz::seeds() {
        let dir = corpus.join(seed.target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(seed.name), &seed.bytes)?;
    }
    println!("wrote the seed corpus to {}", corpus.display());
    Ok(())
}
