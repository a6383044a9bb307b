//! `pvkit new NAME`: scaffolds a guest kernel crate that builds with a plain
//! `cargo build --release` and boots with `pvkit run`.
//!
//! The files are real files under `cli/templates/guest/`, embedded here. `{{name}}` in
//! them is the crate's name and `{{dependencies}}` the `pvkit-abi`/`pvkit-guest` lines:
//! by path when a pvkit checkout is known ([`PvkitSource::Checkout`]), else by version
//! ([`PvkitSource::Version`], with a note that the crates are not published yet).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The template files: path in the new crate, contents.
const TEMPLATE: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../templates/guest/Cargo.toml.in"),
    ),
    (
        ".cargo/config.toml",
        include_str!("../templates/guest/.cargo/config.toml"),
    ),
    ("linker.ld", include_str!("../templates/guest/linker.ld")),
    (
        "rust-toolchain.toml",
        include_str!("../templates/guest/rust-toolchain.toml"),
    ),
    (
        "src/main.rs",
        include_str!("../templates/guest/src/main.rs"),
    ),
    ("README.md", include_str!("../templates/guest/README.md.in")),
    (".gitignore", include_str!("../templates/guest/gitignore")),
];

/// The pvkit checkout this binary was built from (it may have moved since).
const BUILD_CHECKOUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Longest crate name accepted (crates.io's limit).
pub const MAX_NAME_LEN: usize = 64;

/// Why `pvkit new` refused or failed.
#[derive(Debug, Error)]
pub enum NewError {
    /// NAME is not a valid crate name.
    #[error("`{name}` is not a valid crate name: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// The destination exists and has files in it.
    #[error(
        "{} already exists and is not empty; pvkit new creates a new crate only in a new or \
         empty directory (choose another with --path DIR)",
        .0.display()
    )]
    NotEmpty(PathBuf),
    /// The destination exists and is not a directory.
    #[error("{} already exists and is not a directory (choose another with --path DIR)", .0.display())]
    NotADirectory(PathBuf),
    /// `--pvkit-path` does not name a pvkit checkout.
    #[error(
        "{} is not a pvkit checkout (no abi/Cargo.toml of pvkit-abi and crates/guest/Cargo.toml \
         of pvkit-guest in it)",
        .0.display()
    )]
    NotACheckout(PathBuf),
    /// A path that cannot be written into Cargo.toml.
    #[error("{} is not valid UTF-8, so it cannot be written into Cargo.toml", .0.display())]
    NonUtf8Path(PathBuf),
    /// Creating a directory or writing a file failed.
    #[error("cannot {what} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// What to create.
#[derive(Clone, Debug)]
pub struct NewOptions {
    /// The crate's (and the kernel binary's) name.
    pub name: String,
    /// The directory to create; relative to `cwd`. Default: `cwd/NAME`.
    pub path: Option<PathBuf>,
    /// The pvkit checkout to depend on by path (`--pvkit-path`).
    pub pvkit_path: Option<PathBuf>,
}

/// Where the new crate takes `pvkit-abi` and `pvkit-guest` from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PvkitSource {
    /// By path, from this pvkit checkout (canonical path).
    Checkout(PathBuf),
    /// By version from crates.io (where they are not published yet).
    Version(String),
}

/// What was created.
#[derive(Clone, Debug)]
pub struct Created {
    /// The new crate's directory.
    pub dir: PathBuf,
    /// Where its pvkit dependencies come from.
    pub source: PvkitSource,
    /// The files written, relative to `dir`.
    pub files: Vec<PathBuf>,
}

/// Rust keywords (strict and reserved, all editions): not usable as a crate name.
const KEYWORDS: &[&str] = &[
    "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate",
    "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl",
    "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub", "ref",
    "return", "self", "static", "struct", "super", "trait", "true", "try", "type", "typeof",
    "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
];

/// Checks `name` as cargo would for a new binary crate, plus the names of the pvkit crates
/// it depends on.
pub fn validate_name(name: &str) -> Result<(), NewError> {
    let bad = |reason: &str| NewError::InvalidName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let Some(first) = name.chars().next() else {
        return Err(bad("the name is empty"));
    };
    if name.len() > MAX_NAME_LEN {
        return Err(bad("it is longer than 64 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(NewError::InvalidName {
            name: name.to_owned(),
            reason: format!("{c:?} is not allowed (use ASCII letters, digits, `-` and `_`)"),
        });
    }
    if !(first.is_ascii_alphabetic() || first == '_') {
        return Err(bad("it must start with a letter or `_`"));
    }
    let ident = name.replace('-', "_");
    if KEYWORDS.contains(&ident.as_str()) {
        return Err(bad("it is a Rust keyword"));
    }
    if ["core", "std", "alloc", "proc_macro", "test"].contains(&ident.as_str()) {
        return Err(bad("it is the name of a built-in Rust crate"));
    }
    if ["deps", "examples", "build", "incremental"].contains(&name) {
        return Err(bad("cargo reserves it for a directory of its build output"));
    }
    if ident == "pvkit_abi" || ident == "pvkit_guest" {
        return Err(bad("the new crate depends on the pvkit crate of that name"));
    }
    Ok(())
}

/// Whether `dir` holds a pvkit source tree (`abi/` is pvkit-abi, `crates/guest/` is
/// pvkit-guest).
pub fn is_checkout(dir: &Path) -> bool {
    let has = |manifest: &str, name: &str| {
        std::fs::read_to_string(dir.join(manifest))
            .is_ok_and(|s| s.lines().any(|l| l.trim() == format!("name = \"{name}\"")))
    };
    has("abi/Cargo.toml", "pvkit-abi") && has("crates/guest/Cargo.toml", "pvkit-guest")
}

/// The pvkit checkout that contains `start` (or its nearest existing ancestor), if any.
pub fn find_checkout(start: &Path) -> Option<PathBuf> {
    let existing = start.ancestors().find(|p| p.exists())?;
    let existing = existing.canonicalize().ok()?;
    existing
        .ancestors()
        .find(|p| is_checkout(p))
        .map(Path::to_path_buf)
}

/// Where `pvkit new` takes the pvkit crates from: `--pvkit-path`; else the checkout around
/// the destination or the current directory; else the checkout this binary was built
/// from, if it still exists; else crates.io.
fn pvkit_source(opts: &NewOptions, cwd: &Path, dest: &Path) -> Result<PvkitSource, NewError> {
    if let Some(p) = &opts.pvkit_path {
        let p = cwd.join(p);
        return match p.canonicalize() {
            Ok(c) if is_checkout(&c) => Ok(PvkitSource::Checkout(c)),
            _ => Err(NewError::NotACheckout(p)),
        };
    }
    let found = find_checkout(dest)
        .or_else(|| find_checkout(cwd))
        .or_else(|| {
            Path::new(BUILD_CHECKOUT)
                .canonicalize()
                .ok()
                .filter(|c| is_checkout(c))
        });
    Ok(match found {
        Some(c) => PvkitSource::Checkout(c),
        None => PvkitSource::Version(major_minor(env!("CARGO_PKG_VERSION"))),
    })
}

/// "0.1" from "0.1.0".
fn major_minor(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// `s` as a TOML basic string, quotes included.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `[dependencies]` lines for `source`.
fn dependencies(source: &PvkitSource) -> Result<String, NewError> {
    const OTHER_FORMS: &str = "\
# pvkit-abi and pvkit-guest are not on crates.io yet. The ways to depend on them:
#   by path:   pvkit-guest = { path = \"/path/to/pvkit/crates/guest\", features = [\"runtime\"] }
#              pvkit-abi = { path = \"/path/to/pvkit/abi\", features = [\"guest\"] }
#   from git:  pvkit-guest = { git = \"<the pvkit repository>\", features = [\"runtime\"] }
#              pvkit-abi = { git = \"<the pvkit repository>\", features = [\"guest\"] }
#   once published: version = \"0.1\" in place of path/git.
";
    Ok(match source {
        PvkitSource::Checkout(root) => {
            let abi = root.join("abi");
            let guest = root.join("crates/guest");
            let utf8 = |p: &Path| {
                p.to_str()
                    .map(toml_string)
                    .ok_or_else(|| NewError::NonUtf8Path(p.to_path_buf()))
            };
            format!(
                "{OTHER_FORMS}# `pvkit new` found a pvkit checkout (`--pvkit-path DIR` picks another):\n\
                 pvkit-abi = {{ path = {}, features = [\"guest\"] }}\n\
                 pvkit-guest = {{ path = {}, features = [\"runtime\"] }}",
                utf8(&abi)?,
                utf8(&guest)?
            )
        }
        PvkitSource::Version(v) => format!(
            "{OTHER_FORMS}# `pvkit new` found no pvkit checkout: replace `version` below by one of these.\n\
             pvkit-abi = {{ version = \"{v}\", features = [\"guest\"] }}\n\
             pvkit-guest = {{ version = \"{v}\", features = [\"runtime\"] }}"
        ),
    })
}

/// Writes `contents` to the new file `dir/rel` (never over an existing file).
fn write_new(dir: &Path, rel: &str, contents: &[u8]) -> Result<(), NewError> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| NewError::Io {
            what: "create the directory",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| f.write_all(contents))
        .map_err(|source| NewError::Io {
            what: "write",
            path,
            source,
        })
}

/// Creates the guest crate described by `opts`, with relative paths taken from `cwd`.
pub fn create(opts: &NewOptions, cwd: &Path) -> Result<Created, NewError> {
    validate_name(&opts.name)?;
    let dir = cwd.join(opts.path.as_deref().unwrap_or(Path::new(&opts.name)));
    match std::fs::metadata(&dir) {
        Ok(m) if !m.is_dir() => return Err(NewError::NotADirectory(dir)),
        Ok(_) => {
            let mut entries = std::fs::read_dir(&dir).map_err(|source| NewError::Io {
                what: "read the directory",
                path: dir.clone(),
                source,
            })?;
            if entries.next().is_some() {
                return Err(NewError::NotEmpty(dir));
            }
        }
        Err(_) => {}
    }
    let source = pvkit_source(opts, cwd, &dir)?;
    let deps = dependencies(&source)?;
    std::fs::create_dir_all(&dir).map_err(|source| NewError::Io {
        what: "create the directory",
        path: dir.clone(),
        source,
    })?;
    let mut files = Vec::new();
    for (rel, text) in TEMPLATE {
        let text = text
            .replace("{{name}}", &opts.name)
            .replace("{{dependencies}}", &deps);
        write_new(&dir, rel, text.as_bytes())?;
        files.push(PathBuf::from(rel));
    }
    // The versions pvkit's own guest kernel is built and tested with: the first build
    // resolves against them (and offline, from what that build already fetched).
    if let PvkitSource::Checkout(root) = &source {
        if let Ok(lock) = std::fs::read(root.join("guest-kernel/Cargo.lock")) {
            write_new(&dir, "Cargo.lock", &lock)?;
            files.push(PathBuf::from("Cargo.lock"));
        }
    }
    Ok(Created { dir, source, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> PathBuf {
        Path::new(BUILD_CHECKOUT).canonicalize().unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pvkit-new-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn reason(name: &str) -> String {
        match validate_name(name) {
            Err(NewError::InvalidName { reason, .. }) => reason,
            other => panic!("{name:?}: {other:?}"),
        }
    }

    #[test]
    fn crate_names() {
        for ok in ["my-os", "os_2", "_x", "A", &"a".repeat(64)] {
            validate_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        assert_eq!(reason(""), "the name is empty");
        assert_eq!(reason(&"a".repeat(65)), "it is longer than 64 characters");
        assert_eq!(
            reason("my os"),
            "' ' is not allowed (use ASCII letters, digits, `-` and `_`)"
        );
        assert_eq!(
            reason("../x"),
            "'.' is not allowed (use ASCII letters, digits, `-` and `_`)"
        );
        assert_eq!(reason("2os"), "it must start with a letter or `_`");
        assert_eq!(reason("-os"), "it must start with a letter or `_`");
        assert_eq!(reason("fn"), "it is a Rust keyword");
        assert_eq!(reason("self"), "it is a Rust keyword");
        assert_eq!(reason("core"), "it is the name of a built-in Rust crate");
        assert_eq!(
            reason("proc-macro"),
            "it is the name of a built-in Rust crate"
        );
        assert_eq!(
            reason("deps"),
            "cargo reserves it for a directory of its build output"
        );
        assert_eq!(
            reason("pvkit-guest"),
            "the new crate depends on the pvkit crate of that name"
        );
        assert_eq!(
            validate_name("my os").unwrap_err().to_string(),
            "`my os` is not a valid crate name: ' ' is not allowed (use ASCII letters, digits, \
             `-` and `_`)"
        );
    }

    /// The template pins the toolchain the repository pins.
    #[test]
    fn template_toolchain_is_the_repositorys() {
        let channel = |text: &str| {
            text.lines()
                .find(|l| l.starts_with("channel"))
                .map(str::to_owned)
                .unwrap()
        };
        let repo_file = std::fs::read_to_string(repo().join("rust-toolchain.toml")).unwrap();
        let template = TEMPLATE
            .iter()
            .find(|(p, _)| *p == "rust-toolchain.toml")
            .unwrap()
            .1;
        assert_eq!(channel(template), channel(&repo_file));
        assert!(template.contains("targets = [\"x86_64-unknown-none\"]"));
    }

    #[test]
    fn checkout_is_found_from_inside_it() {
        let r = repo();
        assert!(is_checkout(&r));
        assert_eq!(find_checkout(&r.join("cli/src")), Some(r.clone()));
        // A directory that does not exist yet, inside the checkout.
        assert_eq!(
            find_checkout(&r.join("target/not/yet/made")),
            Some(r.clone())
        );
        assert_eq!(find_checkout(Path::new("/")), None);
        assert!(!is_checkout(&r.join("abi")));
    }

    #[test]
    fn refuses_a_non_empty_directory_and_a_file() {
        let d = scratch("refuse");
        std::fs::write(d.join("keep.txt"), b"mine").unwrap();
        let opts = NewOptions {
            name: "os".into(),
            path: Some(d.clone()),
            pvkit_path: None,
        };
        let e = create(&opts, Path::new("/")).unwrap_err();
        assert!(matches!(&e, NewError::NotEmpty(p) if *p == d), "{e:?}");
        assert!(
            e.to_string().contains("already exists and is not empty"),
            "{e}"
        );
        assert_eq!(std::fs::read(d.join("keep.txt")).unwrap(), b"mine");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);

        let opts = NewOptions {
            path: Some(d.join("keep.txt")),
            ..opts
        };
        let e = create(&opts, Path::new("/")).unwrap_err();
        assert!(matches!(e, NewError::NotADirectory(_)), "{e:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn pvkit_path_must_be_a_checkout() {
        let d = scratch("notcheckout");
        let opts = NewOptions {
            name: "os".into(),
            path: Some(d.join("os")),
            pvkit_path: Some(d.clone()),
        };
        let e = create(&opts, Path::new("/")).unwrap_err();
        assert!(matches!(e, NewError::NotACheckout(_)), "{e:?}");
        assert!(!d.join("os").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn writes_every_file_with_path_dependencies() {
        let d = scratch("files");
        let opts = NewOptions {
            name: "tiny-os".into(),
            path: None,
            pvkit_path: Some(repo()),
        };
        let c = create(&opts, &d).unwrap();
        assert_eq!(c.dir, d.join("tiny-os"));
        assert_eq!(c.source, PvkitSource::Checkout(repo()));
        for f in [
            "Cargo.toml",
            ".cargo/config.toml",
            "linker.ld",
            "rust-toolchain.toml",
            "src/main.rs",
            "README.md",
            ".gitignore",
            "Cargo.lock",
        ] {
            assert!(c.dir.join(f).is_file(), "{f} missing");
        }
        let manifest = std::fs::read_to_string(c.dir.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("name = \"tiny-os\""), "{manifest}");
        let abi_line = format!(
            "pvkit-abi = {{ path = \"{}/abi\", features = [\"guest\"] }}",
            repo().display()
        );
        assert!(manifest.contains(&abi_line), "{manifest}");
        assert!(!manifest.contains("{{"), "{manifest}");
        let readme = std::fs::read_to_string(c.dir.join("README.md")).unwrap();
        assert!(readme.contains("target/x86_64-unknown-none/release/tiny-os"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn version_form_and_toml_strings() {
        let deps = dependencies(&PvkitSource::Version("0.1".into())).unwrap();
        assert!(deps.ends_with(
            "pvkit-abi = { version = \"0.1\", features = [\"guest\"] }\n\
             pvkit-guest = { version = \"0.1\", features = [\"runtime\"] }"
        ));
        assert_eq!(major_minor("0.1.0"), "0.1");
        assert_eq!(toml_string(r#"/a "b"\c"#), r#""/a \"b\"\\c""#);
        assert_eq!(toml_string("x\ny"), "\"x\\u000Ay\"");
    }
}
