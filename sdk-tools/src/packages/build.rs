//! `build_packages`: plan (which packages the board needs, their input
//! hashes, and whether each is up to date, in the binary package cache, or
//! must be built) and execute (build in dependency order, independent
//! packages in parallel, each result packed and installed into the
//! cross-root before its dependents start). Building one recipe is
//! `packages::builder` / `packages::debimport`; installing is
//! `packages::crossroot`.

use sdk_common::error::bad_input;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use super::binpkg::{self, Content, PackageMeta};
use super::crossroot::{CrossRoot, Installer, write_atomic};
use super::recipe::{Recipe, RecipeKind, RecipeSet};
use super::{builder, debimport, graph, hash, maintscripts};
use crate::board::Board;
use crate::exit::UsageError;

/// What the caller asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The distro repo (holds `packages/` and maybe `profiles/`).
    pub repo: PathBuf,
    pub build_root: PathBuf,
    pub board: String,
    /// Packages to build (with what they need); empty: the board's
    /// OS meta-package.
    pub packages: Vec<String>,
    pub jobs: usize,
    pub keep_going: bool,
}

/// What will happen to a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Installed with the same input hash: nothing to do.
    UpToDate,
    /// A binary package with this input hash exists: install it.
    Install,
    /// Build it.
    Build,
}

/// One package of a plan.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Planned {
    pub name: String,
    pub version: String,
    pub kind: super::recipe::Kind,
    pub input_hash: String,
    pub action: Action,
    /// The tree the recipe comes from: `.` for the repo itself, else the
    /// parent tree's path (relative to the repo when it is inside it).
    pub tree: String,
    #[serde(skip)]
    pub deps: Vec<String>,
}

/// A resolved plan.
pub struct Plan {
    pub board: Board,
    pub cross: CrossRoot,
    pub recipes: RecipeSet,
    /// Dependencies first.
    pub packages: Vec<Planned>,
}

/// How a package ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    UpToDate,
    /// Installed from the binary package cache.
    Cached,
    Built,
    Failed,
    /// Not tried: a dependency failed (or the run stopped at a failure).
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PackageReport {
    pub name: String,
    pub version: String,
    pub input_hash: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    pub board: String,
    pub packages: Vec<PackageReport>,
}

impl Report {
    pub fn count(&self, o: &Outcome) -> usize {
        self.packages.iter().filter(|p| &p.outcome == o).count()
    }
    pub fn names(&self, o: &Outcome) -> Vec<&str> {
        self.packages
            .iter()
            .filter(|p| &p.outcome == o)
            .map(|p| p.name.as_str())
            .collect()
    }
    pub fn ok(&self) -> bool {
        self.count(&Outcome::Failed) == 0 && self.count(&Outcome::Skipped) == 0
    }
}

/// Load the board and recipes and order what `opts` asks for. Bad input
/// (unknown board, bad recipe, cycle, missing package) is a [`UsageError`].
pub fn resolve(opts: &Options) -> Result<(Board, RecipeSet, Vec<String>)> {
    let board = crate::board::Board::load(Some(&opts.repo), &opts.board).map_err(bad_input)?;
    let trees = crate::image::repo::trees(&opts.repo).map_err(bad_input)?;
    if !trees.iter().any(|t| t.join("packages").is_dir()) {
        return Err(UsageError(format!(
            "{} has no packages/ directory (nor do its parent trees); run in a distro repo or pass --repo DIR",
            opts.repo.display()
        ))
        .into());
    }
    let recipes = RecipeSet::load_trees(&trees).map_err(bad_input)?;
    let roots = if opts.packages.is_empty() {
        vec![board.os_package.clone()]
    } else {
        opts.packages
            .iter()
            .map(|p| recipes.resolve_name(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(UsageError)?
    };
    let order = graph::build_order(&recipes, &roots).map_err(bad_input)?;
    Ok((board, recipes, order))
}

/// How `--pretend` names a recipe tree: `.` for the repo (`repo` is
/// canonical, as the trees are), a parent by its path relative to the repo
/// when inside it, else in full.
fn tree_label(repo: &Path, tree: &Path) -> String {
    if tree == repo {
        return ".".into();
    }
    match tree.strip_prefix(repo) {
        Ok(rel) => rel.display().to_string(),
        Err(_) => tree.display().to_string(),
    }
}

/// Where a package's binary package with `input_hash` would be.
fn cached_meta(cross: &CrossRoot, recipe: &Recipe, input_hash: &str) -> Option<PackageMeta> {
    let stem = PackageMeta::file_stem(&recipe.version, input_hash);
    let dir = cross.package_dir(&recipe.name);
    let meta: PackageMeta =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{stem}.json"))).ok()?).ok()?;
    (meta.input_hash == input_hash && dir.join(&meta.archive).is_file()).then_some(meta)
}

/// Compute hashes and actions. `installed` gives the installed version
/// of a package.
pub fn plan(
    opts: &Options,
    (board, recipes, order): (Board, RecipeSet, Vec<String>),
    installed: &dyn Fn(&str) -> Option<String>,
) -> Result<Plan> {
    let cross = CrossRoot::new(&opts.build_root, &board.name);
    let needs_toolchain = order
        .iter()
        .any(|n| matches!(recipes.get(n).map(|r| &r.kind), Some(RecipeKind::Build(_))));
    let toolchain = if needs_toolchain {
        hash::toolchain_identity(&board)
    } else {
        String::new()
    };
    let repo = opts
        .repo
        .canonicalize()
        .unwrap_or_else(|_| opts.repo.clone());
    let mut hashes: BTreeMap<String, String> = BTreeMap::new();
    let mut packages = Vec::new();
    for name in &order {
        let recipe = recipes.get(name).expect("ordered names have recipes");
        let deps: Vec<String> = recipe.all_deps().cloned().collect();
        let dep_hashes: Vec<(String, String)> = deps
            .iter()
            .map(|d| (d.clone(), hashes[d].clone()))
            .collect();
        let h = hash::input_hash(recipe, &board, &toolchain, &dep_hashes)
            .with_context(|| format!("hash the inputs of {name}"))?;
        let action = if installed(name).as_deref() == Some(h.as_str()) {
            Action::UpToDate
        } else if cached_meta(&cross, recipe, &h).is_some() {
            Action::Install
        } else {
            Action::Build
        };
        hashes.insert(name.clone(), h.clone());
        packages.push(Planned {
            name: name.clone(),
            version: recipe.version.clone(),
            kind: recipe.kind_name(),
            input_hash: h,
            action,
            tree: recipes
                .trees
                .get(name)
                .map(|t| tree_label(&repo, t))
                .unwrap_or_else(|| ".".into()),
            deps,
        });
    }
    Ok(Plan {
        board,
        cross,
        recipes,
        packages,
    })
}

/// Plan without touching the cross-root (for `--pretend`).
pub fn pretend(opts: &Options) -> Result<Plan> {
    let resolved = resolve(opts)?;
    let cross = CrossRoot::new(&opts.build_root, &resolved.0.name);
    plan(opts, resolved, &|n| {
        cross
            .installed_package(n)
            .ok()
            .flatten()
            .map(|m| m.input_hash)
    })
}

/// Live progress: a summary line on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    built: usize,
    cached: usize,
    failed: usize,
    running: BTreeSet<String>,
}

impl Progress {
    fn new(total: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("[{elapsed}] {bar:20} {pos}/{len} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            built: 0,
            cached: 0,
            failed: 0,
            running: BTreeSet::new(),
        }
    }

    fn refresh(&self) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "built {}, cached {}, failed {}, running: {}",
                self.built,
                self.cached,
                self.failed,
                self.running.iter().cloned().collect::<Vec<_>>().join(" ")
            ));
        }
    }

    fn line(&self, text: String) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn start(&mut self, name: &str, what: &str) {
        self.running.insert(name.to_string());
        if self.bar.is_none() {
            self.line(format!("{what} {name}"));
        }
        self.refresh();
    }

    fn finish(&mut self, name: &str, outcome: &Outcome, secs: f64) {
        self.running.remove(name);
        match outcome {
            Outcome::Built => self.built += 1,
            Outcome::Cached => self.cached += 1,
            Outcome::Failed => self.failed += 1,
            _ => {}
        }
        let word = match outcome {
            Outcome::Built => "built",
            Outcome::Cached => "installed from cache",
            Outcome::Failed => "FAILED",
            _ => "",
        };
        self.line(format!("{word} {name} ({secs:.1} s)"));
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
        self.refresh();
    }

    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Everything a worker needs.
struct Job {
    recipe: Recipe,
    planned: Planned,
    board: Board,
    cross: CrossRoot,
    jobs: usize,
    installer: Arc<Mutex<Installer>>,
}

/// Build (or fetch from cache) and install one package.
fn run_job(job: &Job, log: &Path) -> Result<Outcome> {
    let Job {
        recipe,
        planned,
        board,
        cross,
        ..
    } = job;
    if planned.action == Action::Install
        && let Some(meta) = cached_meta(cross, recipe, &planned.input_hash)
    {
        job.installer.lock().unwrap().install(&meta)?;
        return Ok(Outcome::Cached);
    }
    let mut header =
        std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    writeln!(
        header,
        "== {} {} for {} (input hash {})",
        recipe.name, recipe.version, board.name, planned.input_hash
    )?;
    drop(header);
    let mut debs = Vec::new();
    let mut scripts = maintscripts::Report::default();
    let mut content: Content = match &recipe.kind {
        RecipeKind::Build(spec) => builder::build(recipe, spec, board, cross, job.jobs, log)?,
        RecipeKind::Binary(spec) => {
            let have = {
                let inst = job.installer.lock().unwrap();
                let closure = graph::runtime_closure(&planned.deps, |n| {
                    inst.get(n).map(|m| {
                        // Build and runtime deps both count: what they hold
                        // is in the cross-root already.
                        m.depends.as_slice()
                    })
                })
                .unwrap_or_default();
                let metas: Vec<&PackageMeta> = closure.iter().filter_map(|n| inst.get(n)).collect();
                debimport::debs_of(&metas)
            };
            let (content, infos, report) = debimport::import(
                &cross.cache_dir(),
                &board.debian_arch,
                &spec.for_arch(&board.debian_arch),
                &have,
            )
            .with_context(|| format!("{}: import Debian packages", recipe.name))?;
            debs = infos;
            scripts = report;
            let mut log_file = std::fs::OpenOptions::new().append(true).open(log)?;
            for d in &debs {
                writeln!(
                    log_file,
                    "imported {} {} {}",
                    d.package, d.version, d.architecture
                )?;
            }
            content
        }
        RecipeKind::Meta => Content::new(),
    };
    for (path, text) in &recipe.capabilities {
        let value = crate::formats::fs::xattr::capability_from_text(text)?;
        match content.get_mut(path) {
            Some(item) if item.kind == binpkg::FileKind::File => {
                item.xattrs
                    .insert(crate::formats::fs::xattr::CAPABILITY.into(), value);
            }
            _ => {
                return Err(UsageError(format!(
                    "{}: capabilities: the package holds no file /{path}; fix the path or remove the line",
                    recipe.file().display()
                ))
                .into());
            }
        }
    }
    let meta = pack(job, content, debs, scripts)?;
    job.installer.lock().unwrap().install(&meta)?;
    if matches!(recipe.kind, RecipeKind::Build(_)) {
        builder::clean(cross, recipe);
    }
    Ok(Outcome::Built)
}

/// Write the binary package (archive, then metadata: the metadata file
/// appearing is what makes the package exist).
fn pack(
    job: &Job,
    content: Content,
    debs: Vec<binpkg::DebInfo>,
    maintainer_scripts: maintscripts::Report,
) -> Result<PackageMeta> {
    let Job {
        recipe,
        planned,
        board,
        cross,
        ..
    } = job;
    let dir = cross.package_dir(&recipe.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    // Leftovers of a killed run (the board lock keeps other writers out).
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(".partial-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let stem = PackageMeta::file_stem(&recipe.version, &planned.input_hash);
    let archive = format!("{stem}.tar.zst");
    let tmp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(&dir)
        .with_context(|| format!("create a temp file in {}", dir.display()))?;
    let (files, sha) = binpkg::write_archive(&content, tmp.path(), builder::SOURCE_DATE_EPOCH)?;
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("chmod {}", tmp.path().display()))?;
    }
    tmp.persist(dir.join(&archive))
        .with_context(|| format!("rename into {}", dir.join(&archive).display()))?;
    let meta = PackageMeta {
        format: binpkg::FORMAT,
        name: recipe.name.clone(),
        version: recipe.version.clone(),
        kind: recipe.kind_name(),
        description: recipe.description.clone(),
        board: board.name.clone(),
        arch: board.arch.clone(),
        debian_arch: board.debian_arch.clone(),
        input_hash: planned.input_hash.clone(),
        depends: recipe.depends.clone(),
        build_depends: recipe.build_depends.clone(),
        debs,
        maintainer_scripts,
        archive,
        archive_sha256: sha,
        files,
    };
    write_atomic(
        &dir.join(format!("{stem}.json")),
        &serde_json::to_vec_pretty(&meta)?,
    )?;
    Ok(meta)
}

/// Set up the cross-root if needed, then build what the plan needs.
pub fn run(opts: &Options) -> Result<Report> {
    let resolved = resolve(opts)?;
    let board = &resolved.0;
    let cross = CrossRoot::new(&opts.build_root, &board.name);
    if cross.setup(board, false)? {
        eprintln!(
            "set up the cross-root {} for {}",
            cross.root.display(),
            board.name
        );
    }
    let _lock = cross.lock()?;
    let installer = Installer::open(&cross)?;
    let plan = plan(opts, resolved, &|n| {
        installer.get(n).map(|m| m.input_hash.clone())
    })?;
    let installer = Arc::new(Mutex::new(installer));
    execute(plan, opts, installer)
}

impl PackageReport {
    /// How `p` ended, without a log or an error.
    fn of(p: &Planned, outcome: Outcome, seconds: f64) -> PackageReport {
        PackageReport {
            name: p.name.clone(),
            version: p.version.clone(),
            input_hash: p.input_hash.clone(),
            outcome,
            log: None,
            error: None,
            seconds,
        }
    }
}

/// A failed build, for the terminal: the error, where the log is, and its
/// last lines (the error is appended to the log too).
fn failure_text(name: &str, msg: &str, log: &Path) -> String {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
    {
        let _ = writeln!(f, "== FAILED: {msg}");
    }
    let tail = crate::cmd::file_tail(log, 15);
    let mut text = format!("error: {name} failed: {msg}\n  log: {}", log.display());
    if !tail.is_empty() {
        text.push_str("\n  last lines of the log:");
        for l in tail.lines() {
            text.push_str(&format!("\n  | {l}"));
        }
    }
    text
}

fn execute(plan: Plan, opts: &Options, installer: Arc<Mutex<Installer>>) -> Result<Report> {
    let Plan {
        board,
        cross,
        recipes,
        packages,
    } = plan;
    let todo = packages
        .iter()
        .filter(|p| p.action != Action::UpToDate)
        .count();
    let mut progress = Progress::new(todo);
    let mut outcome: BTreeMap<String, PackageReport> = BTreeMap::new();
    for p in &packages {
        if p.action == Action::UpToDate {
            outcome.insert(p.name.clone(), PackageReport::of(p, Outcome::UpToDate, 0.0));
        }
    }
    let (tx, rx) = mpsc::channel::<(String, Result<Outcome>, f64)>();
    let mut running = 0usize;
    let mut stop = false;
    let jobs = opts.jobs.max(1);
    loop {
        // Start what is ready, in plan order.
        while !stop && running < jobs {
            let ready = packages.iter().find(|p| {
                !outcome.contains_key(&p.name)
                    && !progress.running.contains(&p.name)
                    && p.deps.iter().all(|d| {
                        matches!(
                            outcome.get(d).map(|r| &r.outcome),
                            Some(Outcome::UpToDate | Outcome::Cached | Outcome::Built)
                        )
                    })
            });
            let Some(p) = ready else { break };
            let job = Job {
                recipe: recipes.get(&p.name).unwrap().clone(),
                planned: p.clone(),
                board: board.clone(),
                cross: cross.clone(),
                jobs,
                installer: installer.clone(),
            };
            progress.start(
                &p.name,
                if p.action == Action::Build {
                    "building"
                } else {
                    "installing"
                },
            );
            let log = cross.log_path(&p.name);
            if let Some(parent) = log.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("create {}", parent.display()))?;
            }
            let tx = tx.clone();
            running += 1;
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let result = run_job(&job, &log);
                let _ = tx.send((job.planned.name.clone(), result, t0.elapsed().as_secs_f64()));
            });
        }
        if running == 0 {
            break;
        }
        let (name, result, secs) = rx.recv().expect("workers send before exiting");
        running -= 1;
        let p = packages.iter().find(|p| p.name == name).unwrap();
        let log = cross.log_path(&name);
        let report = match result {
            Ok(o) => PackageReport {
                log: (p.action == Action::Build).then(|| log.clone()),
                ..PackageReport::of(p, o, secs)
            },
            Err(e) => {
                let msg = format!("{e:#}");
                progress.line(failure_text(&name, &msg, &log));
                if !opts.keep_going {
                    stop = true;
                }
                PackageReport {
                    log: Some(log.clone()),
                    error: Some(msg),
                    ..PackageReport::of(p, Outcome::Failed, secs)
                }
            }
        };
        progress.finish(&name, &report.outcome, secs);
        outcome.insert(name, report);
    }
    progress.done();
    // What never ran: a dependency failed, or the run stopped early.
    for p in &packages {
        outcome
            .entry(p.name.clone())
            .or_insert_with(|| PackageReport::of(p, Outcome::Skipped, 0.0));
    }
    let packages = packages
        .iter()
        .map(|p| outcome.remove(&p.name).unwrap())
        .collect();
    Ok(Report {
        board: board.name,
        packages,
    })
}
