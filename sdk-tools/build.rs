//! Embeds the shipped board profiles (`profiles/<board>/*.toml` at the
//! workspace root) into the binary, so the tools know the standard boards
//! without a checkout; a distro repo's own `profiles/` overrides them.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut entries = Vec::new();
    if let Ok(boards) = std::fs::read_dir(&root) {
        for board in boards.flatten() {
            println!("cargo:rerun-if-changed={}", board.path().display());
            let Ok(files) = std::fs::read_dir(board.path()) else {
                continue;
            };
            for file in files.flatten() {
                let path = file.path();
                if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
                    println!("cargo:rerun-if-changed={}", path.display());
                    let rel = format!(
                        "{}/{}",
                        board.file_name().to_string_lossy(),
                        file.file_name().to_string_lossy()
                    );
                    entries.push((rel, path.canonicalize().unwrap()));
                }
            }
        }
    }
    entries.sort();
    let mut out = String::from("/// Shipped profile files: (`<board>/<file>`, contents).\n");
    out.push_str("pub static EMBEDDED: &[(&str, &str)] = &[\n");
    for (rel, path) in entries {
        writeln!(
            out,
            "    ({rel:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("embedded_profiles.rs");
    std::fs::write(dest, out).unwrap();
}
