//! The loop: run a target's seeds, then mutated inputs, each under `catch_unwind`, until the
//! runs or seconds are spent or something breaks. A panic (ours or a dependency's, on any
//! thread, even one the product catches itself), a broken invariant (a panic too), a hang or
//! an abort is a finding: the input is saved under `<findings>/<target>/` with what happened.
//!
//! An input joins the corpus when its outcome (the target's coarse fingerprint of what the
//! parser said: which variant, which error) has not been seen before, which steers the
//! mutations towards the parsers' deeper branches without compiler instrumentation.

use std::backtrace::Backtrace;
use std::collections::HashSet;
use std::ffi::CString;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use crate::mutate::Mutator;
use crate::rng::{Rng, fnv1a};
use crate::targets::{Harness, Target};

/// Inputs kept for mutation, per target, at most.
const MAX_CORPUS: usize = 8192;

#[derive(Debug, Clone)]
pub struct Options {
    /// Mutated inputs to run per target (the seeds come on top).
    pub runs: Option<u64>,
    /// Seconds to run per target.
    pub seconds: Option<f64>,
    pub seed: u64,
    /// Where findings go: `<findings>/<target>/<hash>.bin` and `.txt`.
    pub findings: PathBuf,
    /// Print a line every ten seconds.
    pub progress: bool,
    /// One input running longer than this is a hang.
    pub hang_after: Duration,
    /// A cap on input length below the target's own, to steer around a known finding.
    pub max_len: Option<usize>,
}

#[derive(Debug)]
pub struct Report {
    pub target: &'static str,
    /// Inputs run, seeds included.
    pub execs: u64,
    pub elapsed: Duration,
    pub corpus: usize,
    pub finding: Option<Finding>,
}

impl Report {
    pub fn per_second(&self) -> f64 {
        self.execs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, Clone)]
pub struct Finding {
    /// The input, as saved.
    pub input: PathBuf,
    pub panic: Caught,
}

/// A panic as the hook saw it.
#[derive(Debug, Clone)]
pub struct Caught {
    pub message: String,
    pub location: String,
    pub thread: String,
    pub backtrace: String,
}

impl Caught {
    /// The message, where, and the frames of the code involved (ours and the parsers'),
    /// without the standard library's and the fuzzer's own.
    pub fn summary(&self) -> String {
        let frames: Vec<&str> = self
            .backtrace
            .lines()
            .map(str::trim)
            .filter(|l| l.contains(": ") && !l.starts_with("at "))
            .filter(|l| {
                ![
                    "std::",
                    "core::",
                    "alloc::",
                    "metaclinic_fuzz::engine",
                    "__rust",
                    "<alloc::",
                ]
                .iter()
                .any(|skip| l.contains(skip))
            })
            .take(12)
            .collect();
        format!(
            "panicked at {} (thread {}): {}\n  {}",
            self.location,
            self.thread,
            self.message,
            frames.join("\n  ")
        )
    }
}

static PANICS: Mutex<Vec<Caught>> = Mutex::new(Vec::new());
static PANIC_COUNT: AtomicU64 = AtomicU64::new(0);
/// An input is running: its panics are reported as findings, not printed.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Record every panic, on every thread: a target's harness may run the product's threads
/// (ICE-TCP), whose panics never reach our `catch_unwind`. Those outside an input are
/// printed as usual too.
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !RUNNING.load(Ordering::SeqCst) {
                previous(info);
            }
            let message = if let Some(s) = info.payload().downcast_ref::<&str>() {
                (*s).to_owned()
            } else if let Some(s) = info.payload().downcast_ref::<String>() {
                s.clone()
            } else {
                "(a panic without a message)".to_owned()
            };
            let caught = Caught {
                message,
                location: info
                    .location()
                    .map_or_else(|| "?".into(), |l| l.to_string()),
                thread: std::thread::current().name().unwrap_or("?").to_owned(),
                backtrace: Backtrace::force_capture().to_string(),
            };
            let mut all = PANICS.lock().unwrap_or_else(|p| p.into_inner());
            if all.len() < 16 {
                all.push(caught);
            }
            PANIC_COUNT.fetch_add(1, Ordering::SeqCst);
        }));
    });
}

/// The input being run, for the hang watchdog and the abort handler.
struct Current {
    input: Vec<u8>,
    /// The directory a hang or an abort saves it to.
    dir: PathBuf,
    abort_file: Option<CString>,
    started_ms: u64,
}

static CURRENT: Mutex<Current> = Mutex::new(Current {
    input: Vec::new(),
    dir: PathBuf::new(),
    abort_file: None,
    started_ms: 0,
});

fn epoch_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// A thread that saves the running input and ends the process when one input runs past
/// `hang_after`, and a SIGABRT handler that saves it when the process aborts (a stack
/// overflow, an allocation failure): neither can be caught as a panic.
fn install_watchdogs(hang_after: Duration) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::thread::Builder::new()
            .name("fuzz-watchdog".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(250));
                    let cur = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
                    if cur.started_ms == 0
                        || epoch_ms() - cur.started_ms < hang_after.as_millis() as u64
                    {
                        continue;
                    }
                    let path = save(&cur.dir, "hang-", &cur.input);
                    let note = format!("one input ran for more than {hang_after:?}\n");
                    let _ = std::fs::write(path.with_extension("txt"), &note);
                    eprintln!("FINDING (hang): {note}  input saved to {}", path.display());
                    std::process::exit(2);
                }
            })
            .expect("starting the watchdog thread");
        extern "C" fn on_abort(_: libc::c_int) {
            // Best effort, in a signal handler: no allocation, a lock that nobody holds while
            // an input runs, then the default action.
            if let Ok(cur) = CURRENT.try_lock()
                && let Some(path) = &cur.abort_file
            {
                // SAFETY: plain system calls on a valid C string and a live buffer.
                unsafe {
                    let fd = libc::open(
                        path.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC,
                        0o644,
                    );
                    if fd >= 0 {
                        libc::write(fd, cur.input.as_ptr().cast(), cur.input.len());
                        libc::close(fd);
                        let say = b"\nFINDING (abort): the input is saved to ";
                        libc::write(2, say.as_ptr().cast(), say.len());
                        let path = path.as_bytes();
                        libc::write(2, path.as_ptr().cast(), path.len());
                        libc::write(2, b"\n".as_ptr().cast(), 1);
                    }
                }
            }
            // SAFETY: restoring the default action and raising the signal again.
            unsafe {
                libc::signal(libc::SIGABRT, libc::SIG_DFL);
                libc::raise(libc::SIGABRT);
            }
        }
        // SAFETY: installing a handler that only makes async-signal-safe calls (see above).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_abort as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_ONSTACK;
            libc::sigaction(libc::SIGABRT, &action, std::ptr::null_mut());
        }
    });
}

fn save(dir: &Path, prefix: &str, input: &[u8]) -> PathBuf {
    let _ = std::fs::create_dir_all(dir);
    let path = dir.join(format!("{prefix}{:016x}.bin", fnv1a(input)));
    let _ = std::fs::write(&path, input);
    path
}

/// Run one input: its outcome fingerprint, or the panic it caused.
pub fn execute(harness: &mut dyn Harness, input: &[u8]) -> Result<u64, Caught> {
    {
        let mut cur = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
        cur.input.clear();
        cur.input.extend_from_slice(input);
        cur.started_ms = epoch_ms();
    }
    // A panic on one of the product's threads after the previous input had returned (a
    // timer, say): still a finding, saved with this input, which may not reproduce it.
    if let Some(mut late) = take_panics().into_iter().next() {
        late.message = format!("(on a thread, between inputs) {}", late.message);
        return Err(late);
    }
    RUNNING.store(true, Ordering::SeqCst);
    let result = panic::catch_unwind(AssertUnwindSafe(|| harness.run(input)));
    RUNNING.store(false, Ordering::SeqCst);
    CURRENT.lock().unwrap_or_else(|p| p.into_inner()).started_ms = 0;
    let caught = take_panics().into_iter().next();
    match (result, caught) {
        (Ok(fingerprint), None) => Ok(fingerprint),
        (_, Some(caught)) => Err(caught),
        (Err(_), None) => Err(Caught {
            message: "a panic the hook did not see".into(),
            location: "?".into(),
            thread: "?".into(),
            backtrace: String::new(),
        }),
    }
}

/// The panics recorded since the last call, first first.
pub fn take_panics() -> Vec<Caught> {
    if PANIC_COUNT.swap(0, Ordering::SeqCst) == 0 {
        return Vec::new();
    }
    std::mem::take(&mut *PANICS.lock().unwrap_or_else(|p| p.into_inner()))
}

fn prepare(target: &Target, opts: &Options) -> PathBuf {
    install_panic_hook();
    install_watchdogs(opts.hang_after);
    let dir = opts.findings.join(target.name);
    let mut cur = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
    cur.dir = dir.clone();
    cur.abort_file = CString::new(
        dir.join("abort-latest.bin")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .ok();
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fn record(
    dir: &Path,
    target: &Target,
    opts: &Options,
    exec: u64,
    input: &[u8],
    caught: Caught,
) -> Finding {
    let path = save(dir, "", input);
    let note = format!(
        "target: {}\nentry point: {}\nseed: {} (input {exec} of this run)\nreplay: cargo run --release -p metaclinic-fuzz -- {} --replay {}\n\n{}\n\nfull backtrace:\n{}\n",
        target.name,
        target.entry,
        opts.seed,
        target.name,
        path.display(),
        caught.summary(),
        caught.backtrace
    );
    let _ = std::fs::write(path.with_extension("txt"), note);
    Finding {
        input: path,
        panic: caught,
    }
}

/// Fuzz one target.
pub fn run(target: &Target, opts: &Options) -> Report {
    let dir = prepare(target, opts);
    let mut rng = Rng::for_target(opts.seed, target.name);
    let mut corpus = target.all_seeds();
    let mutator = Mutator {
        grammar: target.grammar,
        dict: target.dict,
        max_len: opts
            .max_len
            .map_or(target.max_len, |m| m.min(target.max_len)),
    };
    let mut harness = (target.build)();
    let mut seen = HashSet::new();
    let start = Instant::now();
    let mut execs = 0u64;
    let mut last_progress = start;
    let report = |execs, corpus: usize, finding| Report {
        target: target.name,
        execs,
        elapsed: start.elapsed(),
        corpus,
        finding,
    };
    for seed in corpus.clone() {
        execs += 1;
        match execute(harness.as_mut(), &seed) {
            Ok(fingerprint) => {
                seen.insert(fingerprint);
            }
            Err(caught) => {
                let finding = record(&dir, target, opts, execs, &seed, caught);
                return report(execs, corpus.len(), Some(finding));
            }
        }
    }
    let runs_done = |mutated: u64| opts.runs.is_some_and(|r| mutated >= r);
    let mut mutated = 0u64;
    loop {
        if runs_done(mutated) {
            break;
        }
        if mutated.is_multiple_of(64) {
            let now = Instant::now();
            if opts
                .seconds
                .is_some_and(|s| (now - start).as_secs_f64() >= s)
            {
                break;
            }
            if opts.progress && now - last_progress >= Duration::from_secs(10) {
                last_progress = now;
                eprintln!(
                    "  {}: {} execs, {:.0}/s, corpus {}",
                    target.name,
                    execs,
                    execs as f64 / (now - start).as_secs_f64(),
                    corpus.len()
                );
            }
        }
        let base = rng.below(corpus.len());
        let other = rng.below(corpus.len());
        let input = mutator.mutate(&mut rng, &corpus[base], &corpus[other]);
        execs += 1;
        mutated += 1;
        match execute(harness.as_mut(), &input) {
            Ok(fingerprint) => {
                if seen.insert(fingerprint) && corpus.len() < MAX_CORPUS {
                    corpus.push(input);
                }
            }
            Err(caught) => {
                let finding = record(&dir, target, opts, execs, &input, caught);
                return report(execs, corpus.len(), Some(finding));
            }
        }
    }
    report(execs, corpus.len(), None)
}

/// Run saved inputs once each (a finding's `.bin`, or any file).
pub fn replay(
    target: &Target,
    opts: &Options,
    files: &[PathBuf],
) -> Vec<(PathBuf, Result<u64, Caught>)> {
    prepare(target, opts);
    let mut harness = (target.build)();
    files
        .iter()
        .map(|f| {
            let input = std::fs::read(f).unwrap_or_else(|e| panic!("reading {}: {e}", f.display()));
            (f.clone(), execute(harness.as_mut(), &input))
        })
        .collect()
}
