//! Package recipes: `packages/<category>/<name>/package.toml` in a distro
//! repo, plus the files next to it. This module finds and parses them
//! strictly into [`Recipe`]s; it does not order, build or install them.
//!
//! ```toml
//! # packages/demo-libs/libgreet/package.toml
//! version = "1.0.0"                    # required
//! kind = "build"                       # build | binary | meta
//! description = "A tiny greeting library"
//! depends = ["sys-libs/base"]          # runtime: installed with this one
//! build-depends = ["dev-util/gen"]     # needed in the cross-root to build
//!
//! [build]                              # kind = "build" only
//! script = "build.sh"                  # default; run with sh -e in the work dir
//! [[build.tarball]]                    # zero or more, unpacked into the work dir
//! file = "greet-1.0.tar.gz"            # in the recipe dir; or url = "https://..."
//! sha256 = "9f86d0...15b0f00a08"       # required
//!
//! [binary]                             # kind = "binary" only
//! # Debian packages for the board's architecture; `a | b` takes the first
//! # one the archive has; `{debian-arch}` is the board's Debian architecture.
//! packages = ["linux-image-cloud-{debian-arch} | linux-image-{debian-arch}"]
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::strict::{self, ParseError};

/// The recipe file name inside a package directory.
pub const RECIPE_FILE: &str = "package.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Build,
    Binary,
    Meta,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Build => "build",
            Kind::Binary => "binary",
            Kind::Meta => "meta",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRecipe {
    version: toml::Spanned<String>,
    kind: toml::Spanned<Kind>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    depends: Vec<toml::Spanned<String>>,
    #[serde(default)]
    build_depends: Vec<toml::Spanned<String>>,
    build: Option<toml::Spanned<RawBuild>>,
    binary: Option<toml::Spanned<RawBinary>>,
    /// File capabilities: `"usr/bin/tool" = "cap_net_raw+ep"`.
    #[serde(default)]
    capabilities: BTreeMap<String, toml::Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawBuild {
    script: Option<toml::Spanned<String>>,
    #[serde(default)]
    tarball: Vec<toml::Spanned<RawTarball>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTarball {
    file: Option<String>,
    url: Option<String>,
    sha256: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawBinary {
    packages: Vec<toml::Spanned<String>>,
}

/// Where a tarball comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarballSource {
    /// A file in the recipe directory.
    File(String),
    /// Downloaded (http, https, file) into the distfiles cache.
    Url(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tarball {
    pub source: TarballSource,
    /// Lower-case hex sha256 the tarball must have.
    pub sha256: String,
    /// Line of the `[[build.tarball]]` entry, for messages.
    pub line: usize,
}

impl Tarball {
    /// File name the tarball is stored under.
    pub fn file_name(&self) -> &str {
        match &self.source {
            TarballSource::File(f) => f.rsplit('/').next().unwrap_or(f),
            TarballSource::Url(u) => u.rsplit('/').next().unwrap_or(u),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// Script file in the recipe directory.
    pub script: String,
    pub tarballs: Vec<Tarball>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinarySpec {
    /// Each entry: alternatives in order of preference, `{debian-arch}`
    /// not yet substituted.
    pub packages: Vec<Vec<String>>,
}

impl BinarySpec {
    /// The alternatives with the board's Debian architecture filled in.
    pub fn for_arch(&self, debian_arch: &str) -> Vec<Vec<String>> {
        self.packages
            .iter()
            .map(|alts| {
                alts.iter()
                    .map(|a| a.replace("{debian-arch}", debian_arch))
                    .collect()
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipeKind {
    Build(BuildSpec),
    Binary(BinarySpec),
    Meta,
}

/// A parsed, validated recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// `category/name`, from the directory.
    pub name: String,
    /// The package directory (holds `package.toml` and the recipe's files).
    pub dir: PathBuf,
    pub version: String,
    pub description: String,
    /// Runtime dependencies.
    pub depends: Vec<String>,
    /// Build-time dependencies.
    pub build_depends: Vec<String>,
    pub kind: RecipeKind,
    /// File capabilities the package's files get (path without the
    /// leading `/` -> `setcap` text), whatever its scripts say.
    pub capabilities: BTreeMap<String, String>,
}

impl Recipe {
    pub fn file(&self) -> PathBuf {
        self.dir.join(RECIPE_FILE)
    }

    pub fn kind_name(&self) -> Kind {
        match self.kind {
            RecipeKind::Build(_) => Kind::Build,
            RecipeKind::Binary(_) => Kind::Binary,
            RecipeKind::Meta => Kind::Meta,
        }
    }

    /// Runtime then build dependencies, without duplicates.
    pub fn all_deps(&self) -> impl Iterator<Item = &String> {
        self.depends.iter().chain(
            self.build_depends
                .iter()
                .filter(|d| !self.depends.contains(d)),
        )
    }
}

/// Check a `category/name` package name.
pub fn check_package_name(name: &str) -> Result<(), String> {
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-._".contains(c))
    };
    match name.split_once('/') {
        Some((cat, n)) if ok_part(cat) && ok_part(n) => Ok(()),
        _ => Err(format!(
            "`{name}` is not a package name; use `category/name` (lower-case letters, digits, + - . _)"
        )),
    }
}

fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.chars().next().is_some_and(|c| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.~_".contains(c))
}

/// Parse one recipe. `name` is `category/name` (from its directory).
pub fn parse(name: &str, dir: &Path, text: &str) -> Result<Recipe, ParseError> {
    let path = dir.join(RECIPE_FILE);
    let raw: RawRecipe = strict::from_toml(&path, text)?;
    let src = Src { path: &path, text };
    if let Err(msg) = check_package_name(name) {
        return Err(ParseError::file(&path, format!("directory name: {msg}")));
    }
    if !valid_version(raw.version.get_ref()) {
        return Err(src.at(
            raw.version.span(),
            format!(
                "version: `{}` must start with a digit and use only letters, digits and + - . ~ _",
                raw.version.get_ref()
            ),
        ));
    }
    let depends = src.deps(name, raw.depends, "depends")?;
    let build_depends = src.deps(name, raw.build_depends, "build-depends")?;
    let kind_span = raw.kind.span();
    let kind = *raw.kind.get_ref();
    let wrong_table = |table: &str, span: Range<usize>| {
        src.at(
            span,
            format!(
                "[{table}] does not belong in a recipe of kind \"{}\"; remove it or change `kind`",
                kind.as_str()
            ),
        )
    };
    let kind = match kind {
        Kind::Build => {
            if let Some(b) = raw.binary {
                return Err(wrong_table("binary", b.span()));
            }
            RecipeKind::Build(src.build_spec(dir, raw.build.map(toml::Spanned::into_inner))?)
        }
        Kind::Binary => {
            if let Some(b) = raw.build {
                return Err(wrong_table("build", b.span()));
            }
            let Some(bin) = raw.binary else {
                return Err(src.at(
                    kind_span,
                    "kind \"binary\" needs a [binary] table with `packages = [...]`".into(),
                ));
            };
            RecipeKind::Binary(src.binary_spec(bin)?)
        }
        Kind::Meta => {
            if let Some(b) = raw.build {
                return Err(wrong_table("build", b.span()));
            }
            if let Some(b) = raw.binary {
                return Err(wrong_table("binary", b.span()));
            }
            RecipeKind::Meta
        }
    };
    let mut capabilities = BTreeMap::new();
    for (path, text) in raw.capabilities {
        let rel = path.trim_start_matches('/').to_string();
        if rel.is_empty()
            || rel
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(src.at(
                text.span(),
                format!("capabilities: {path:?} is not a path inside the package; write it like \"usr/bin/ping\""),
            ));
        }
        if let Err(e) = crate::formats::fs::xattr::capability_from_text(text.get_ref()) {
            return Err(src.at(text.span(), format!("capabilities: {path}: {e}")));
        }
        capabilities.insert(rel, text.into_inner());
    }
    Ok(Recipe {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        version: raw.version.into_inner(),
        description: raw.description,
        depends,
        build_depends,
        kind,
        capabilities,
    })
}

/// The recipe file being parsed, for errors with file, line and column.
struct Src<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Src<'_> {
    fn at(&self, span: Range<usize>, msg: String) -> ParseError {
        ParseError::at(self.path, self.text, span, msg)
    }

    /// A dependency list: valid names, not the recipe itself, each once.
    fn deps(
        &self,
        name: &str,
        list: Vec<toml::Spanned<String>>,
        key: &str,
    ) -> Result<Vec<String>, ParseError> {
        let mut out: Vec<String> = Vec::new();
        for d in list {
            if let Err(msg) = check_package_name(d.get_ref()) {
                return Err(self.at(d.span(), format!("{key}: {msg}")));
            }
            if d.get_ref() == name {
                return Err(self.at(
                    d.span(),
                    format!("{key}: a package cannot depend on itself"),
                ));
            }
            if !out.contains(d.get_ref()) {
                out.push(d.into_inner());
            }
        }
        Ok(out)
    }

    /// `[build]`: the script (default `build.sh`, which must exist in the
    /// recipe directory) and the checksummed tarballs.
    fn build_spec(&self, dir: &Path, build: Option<RawBuild>) -> Result<BuildSpec, ParseError> {
        let mut spec = BuildSpec {
            script: "build.sh".into(),
            tarballs: Vec::new(),
        };
        if let Some(build) = build {
            if let Some(script) = build.script {
                let s = script.get_ref();
                if s.is_empty() || s.starts_with('/') || s.split('/').any(|c| c == "..") {
                    return Err(self.at(
                        script.span(),
                        format!(
                            "script: `{s}` must be a relative path inside the recipe directory"
                        ),
                    ));
                }
                spec.script = script.into_inner();
            }
            for t in build.tarball {
                spec.tarballs.push(self.tarball(t)?);
            }
        }
        if !dir.join(&spec.script).is_file() {
            return Err(ParseError::file(
                self.path,
                format!(
                    "build script `{}` not found in {}; add it or set [build] script",
                    spec.script,
                    dir.display()
                ),
            ));
        }
        Ok(spec)
    }

    /// One `[[build.tarball]]`: a file in the recipe directory or a URL,
    /// with its sha256.
    fn tarball(&self, t: toml::Spanned<RawTarball>) -> Result<Tarball, ParseError> {
        let span = t.span();
        let line = strict::line_col(self.text, span.start).0;
        let t = t.into_inner();
        let source = match (t.file, t.url) {
            (Some(f), None) => {
                if f.starts_with('/') || f.split('/').any(|c| c == "..") {
                    return Err(self.at(
                        span,
                        format!("tarball file `{f}` must be inside the recipe directory"),
                    ));
                }
                TarballSource::File(f)
            }
            (None, Some(u)) => {
                if !(u.starts_with("https://")
                    || u.starts_with("http://")
                    || u.starts_with("file://"))
                {
                    return Err(self.at(
                        span,
                        format!("tarball url `{u}` must be http://, https:// or file://"),
                    ));
                }
                TarballSource::Url(u)
            }
            _ => {
                return Err(self.at(
                    span,
                    "a tarball needs exactly one of `file` (in the recipe directory) or `url`"
                        .into(),
                ));
            }
        };
        let what = match &source {
            TarballSource::File(f) | TarballSource::Url(f) => f.clone(),
        };
        let Some(sha) = t.sha256 else {
            return Err(self.at(
                span,
                format!(
                    "tarball `{what}` has no sha256; add sha256 = \"<hex>\" (from `sha256sum`)"
                ),
            ));
        };
        let sha = sha.to_ascii_lowercase();
        if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(self.at(
                span,
                format!("tarball `{what}`: sha256 must be 64 hex digits"),
            ));
        }
        Ok(Tarball {
            source,
            sha256: sha,
            line,
        })
    }

    /// `[binary]`: Debian package names, `a | b` for alternatives.
    fn binary_spec(&self, bin: toml::Spanned<RawBinary>) -> Result<BinarySpec, ParseError> {
        let bin_span = bin.span();
        let bin = bin.into_inner();
        if bin.packages.is_empty() {
            return Err(self.at(
                bin_span,
                "[binary] packages is empty; name at least one Debian package".into(),
            ));
        }
        let mut packages = Vec::new();
        for p in bin.packages {
            let alts: Vec<String> = p
                .get_ref()
                .split('|')
                .map(|a| a.trim().to_string())
                .collect();
            for a in &alts {
                let ok = !a.is_empty()
                    && a.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.{}".contains(c)
                    });
                if !ok {
                    return Err(self.at(
                        p.span(),
                        format!("packages: `{a}` is not a Debian package name"),
                    ));
                }
            }
            packages.push(alts);
        }
        Ok(BinarySpec { packages })
    }
}

/// All recipes of a repo, by name.
#[derive(Debug, Clone, Default)]
pub struct RecipeSet {
    pub recipes: BTreeMap<String, Recipe>,
    /// The tree (the repo or one of its parents) each recipe comes from.
    pub trees: BTreeMap<String, PathBuf>,
}

/// Every bad recipe found while loading a repo (all of them, not just the
/// first).
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct RecipeErrors(pub Vec<ParseError>);

impl RecipeSet {
    /// Load `packages/*/*/package.toml` of the repo's trees (its parents',
    /// then its own; see `image::repo::trees`): a later tree's recipe of a
    /// name replaces an earlier one's.
    pub fn load(repo: &Path) -> Result<RecipeSet, RecipeErrors> {
        let trees = crate::image::repo::trees(repo).map_err(|e| RecipeErrors(vec![e]))?;
        Self::load_trees(&trees)
    }

    /// [`RecipeSet::load`] for trees already resolved, in the order they
    /// apply.
    pub fn load_trees(trees: &[PathBuf]) -> Result<RecipeSet, RecipeErrors> {
        let mut set = RecipeSet::default();
        let mut errors = Vec::new();
        for tree in trees {
            match Self::load_tree(tree) {
                Ok(recipes) => {
                    for (name, r) in recipes {
                        set.trees.insert(name.clone(), tree.clone());
                        set.recipes.insert(name, r);
                    }
                }
                Err(RecipeErrors(e)) => errors.extend(e),
            }
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(RecipeErrors(errors))
        }
    }

    /// The recipes of one tree.
    fn load_tree(tree: &Path) -> Result<BTreeMap<String, Recipe>, RecipeErrors> {
        let base = tree.join("packages");
        let mut recipes = BTreeMap::new();
        let mut errors = Vec::new();
        let read_dir = |p: &Path| -> Vec<PathBuf> {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.is_dir())
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        };
        for cat in read_dir(&base) {
            for pkg in read_dir(&cat) {
                let file = pkg.join(RECIPE_FILE);
                if !crate::strict::present(&file) {
                    continue;
                }
                let name = format!(
                    "{}/{}",
                    cat.file_name().unwrap().to_string_lossy(),
                    pkg.file_name().unwrap().to_string_lossy()
                );
                match crate::strict::read_text(&file) {
                    Ok(text) => match parse(&name, &pkg, &text) {
                        Ok(r) => {
                            recipes.insert(name, r);
                        }
                        Err(e) => errors.push(e),
                    },
                    Err(e) => errors.push(e),
                }
            }
        }
        if errors.is_empty() {
            Ok(recipes)
        } else {
            Err(RecipeErrors(errors))
        }
    }

    pub fn get(&self, name: &str) -> Option<&Recipe> {
        self.recipes.get(name)
    }

    /// Resolve a name given on the command line: `category/name`, or a bare
    /// `name` when exactly one category has it.
    pub fn resolve_name(&self, arg: &str) -> Result<String, String> {
        if self.recipes.contains_key(arg) {
            return Ok(arg.to_string());
        }
        if !arg.contains('/') {
            let hits: Vec<&String> = self
                .recipes
                .keys()
                .filter(|k| k.rsplit('/').next() == Some(arg))
                .collect();
            match hits.as_slice() {
                [one] => return Ok((*one).clone()),
                [] => {}
                many => {
                    return Err(format!(
                        "package name `{arg}` is ambiguous: {}; name the category",
                        many.iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
        }
        Err(format!(
            "no recipe for package `{arg}` (expected packages/{}/package.toml)",
            if arg.contains('/') {
                arg.to_string()
            } else {
                format!("<category>/{arg}")
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (f, c) in files {
            std::fs::write(d.path().join(f), c).unwrap();
        }
        d
    }

    #[test]
    fn a_package_toml_that_is_no_file_is_an_error_not_skipped() {
        let d = tempfile::tempdir().unwrap();
        let pkg = d.path().join("packages/cat");
        std::fs::create_dir_all(pkg.join("dir/package.toml")).unwrap();
        std::fs::create_dir_all(pkg.join("loop")).unwrap();
        std::os::unix::fs::symlink("package.toml", pkg.join("loop/package.toml")).unwrap();
        let e = RecipeSet::load(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("cat/dir/package.toml") && e.contains("a directory"),
            "{e}"
        );
        assert!(e.contains("cat/loop/package.toml"), "{e}");
    }

    #[test]
    fn build_recipe_with_defaults() {
        let d = dir_with(&[("build.sh", "true")]);
        let r = parse(
            "a/b",
            d.path(),
            "version = \"1.0\"\nkind = \"build\"\ndepends = [\"x/y\"]\n",
        )
        .unwrap();
        assert_eq!(r.depends, vec!["x/y"]);
        assert!(
            matches!(&r.kind, RecipeKind::Build(s) if s.script == "build.sh" && s.tarballs.is_empty())
        );
    }

    #[test]
    fn missing_sha256_names_line() {
        let d = dir_with(&[("build.sh", "true")]);
        let text = "version = \"1\"\nkind = \"build\"\n\n[build]\n[[build.tarball]]\nfile = \"x.tar.gz\"\n";
        let err = parse("a/b", d.path(), text).unwrap_err().to_string();
        assert!(err.contains("package.toml:5:"), "{err}");
        assert!(err.contains("no sha256"), "{err}");
    }

    #[test]
    fn unknown_key_and_wrong_table() {
        let d = dir_with(&[("build.sh", "true")]);
        let err = parse(
            "a/b",
            d.path(),
            "version = \"1\"\nkind = \"meta\"\nflavour = 2\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(":3:1:") && err.contains("flavour"), "{err}");
        let err = parse(
            "a/b",
            d.path(),
            "version = \"1\"\nkind = \"meta\"\n[build]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("[build] does not belong"), "{err}");
        let err = parse("a/b", d.path(), "version = \"1\"\nkind = \"binary\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("[binary]"), "{err}");
    }

    #[test]
    fn binary_alternatives_and_arch() {
        let d = dir_with(&[]);
        let r = parse(
            "k/kernel",
            d.path(),
            "version = \"1\"\nkind = \"binary\"\n[binary]\npackages = [\"linux-image-cloud-{debian-arch} | linux-image-{debian-arch}\"]\n",
        )
        .unwrap();
        let RecipeKind::Binary(b) = r.kind else {
            panic!()
        };
        assert_eq!(
            b.for_arch("arm64"),
            vec![vec![
                "linux-image-cloud-arm64".to_string(),
                "linux-image-arm64".to_string()
            ]]
        );
    }

    #[test]
    fn names() {
        assert!(check_package_name("dev-libs/greet").is_ok());
        assert!(check_package_name("greet").is_err());
        assert!(check_package_name("a/B").is_err());
        assert!(check_package_name("a/b/c").is_err());
    }
}
