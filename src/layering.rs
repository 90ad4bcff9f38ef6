//! The layering rules of ARCHITECTURE.md ("Layers"), checked on the source: each
//! module's files are read and every `crate::<module>` they name outside comments is
//! compared with the modules it may use. A rule broken here is a dependency pointing
//! the wrong way; fix the code (or, deliberately, the rule and ARCHITECTURE.md).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A module and the crate modules it may import: only these (`Only`), or anything but
/// these (`Never`).
enum Rule {
    Only(&'static [&'static str]),
    Never(&'static [&'static str]),
}

/// The rules, lowest layer first. Keep them in step with ARCHITECTURE.md.
const RULES: &[(&str, Rule)] = &[
    // The log is bytes on disk: reusable and benchmarked alone.
    ("wal", Rule::Only(&[])),
    // The license rules, leases as values and the durability port.
    ("domain", Rule::Only(&["limits"])),
    ("leases", Rule::Only(&["domain", "limits"])),
    (
        "storage",
        Rule::Only(&["domain", "leases", "wal", "limits"]),
    ),
    // Cluster mode implements the port on etcd and replays through storage's code.
    (
        "cluster",
        Rule::Only(&["domain", "leases", "storage", "limits"]),
    ),
    (
        "broker",
        Rule::Never(&[
            "api",
            "server",
            "cli",
            "proto",
            "telemetry",
            "activity",
            "audit",
            "config",
        ]),
    ),
    (
        "api",
        Rule::Never(&["server", "cli", "storage", "wal", "config"]),
    ),
    ("config", Rule::Never(&["server", "cli", "api", "broker"])),
    // The web edge reaches the broker only as a gRPC call down the server's stack.
    (
        "web",
        Rule::Never(&["broker", "api", "storage", "wal", "server", "cli"]),
    ),
    // What an engine embeds: the wire and the client helper, nothing of the daemon.
    (
        "engine_client",
        Rule::Only(&["client", "proto", "tls", "limits"]),
    ),
];

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut broken = Vec::new();
    for (module, rule) in RULES {
        let files = module_files(&src, module);
        assert!(!files.is_empty(), "no source files for module {module}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for used in crate_modules_named(&text) {
                let allowed = match rule {
                    _ if used == *module => true,
                    Rule::Only(allowed) => allowed.contains(&used.as_str()),
                    Rule::Never(forbidden) => !forbidden.contains(&used.as_str()),
                };
                if !allowed {
                    broken.push(format!("{} uses crate::{used}", file.display()));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "layering rules broken:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_checker_sees_plain_and_grouped_imports_and_skips_comments() {
    let text = "use crate::wal::Wal;\n// crate::server in a comment\nlet x = crate::limits::A;\nuse crate::{api, domain::Email};\n";
    let named: Vec<_> = crate_modules_named(text).into_iter().collect();
    assert_eq!(named, ["api", "domain", "limits", "wal"]);
}

/// `src/<module>.rs` or every `.rs` file under `src/<module>/`.
fn module_files(src: &Path, module: &str) -> Vec<PathBuf> {
    let single = src.join(format!("{module}.rs"));
    if single.is_file() {
        return vec![single];
    }
    let mut files = Vec::new();
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The crate modules `text` names as `crate::<module>` or in `crate::{...}`, outside
/// `//` comments.
fn crate_modules_named(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut named = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let first_name = |part: &str| -> String {
            part.trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            named.extend(group.split(',').map(first_name).filter(|n| !n.is_empty()));
        } else {
            named.insert(first_name(rest));
        }
    }
    named
}
