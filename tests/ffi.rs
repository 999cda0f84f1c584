//! The C ABI (`services/ffi`) as products in C and C++ use it: a C test program
//! (`services/ffi/tests/c/ffi_test.c`), the C++ wrapper's test (`services/ffi/tests/cpp`) and the
//! examples (`examples/c`, `examples/cpp`) are compiled with the system's `cc` and `c++` under
//! AddressSanitizer and LeakSanitizer and run against a real all-in-one server that the test
//! stops and restarts between steps.
//!
//! The library is `liblicensing_ffi.so`, built with this binary (the root package dev-depends on
//! `licensing-ffi`, whose cdylib Cargo builds beside its rlib in `target/<profile>/deps`).

use crate::common::*;
use licensing_proto::common::v1::LicenseKind;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `target/<profile>/deps`, where this test binary and the library's cdylib are.
pub fn deps_dir() -> PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().to_owned()
}

/// The directory with `liblicensing_ffi.so` (its cdylib), for `-L` and `-rpath`.
pub fn library_dir() -> PathBuf {
    let deps = deps_dir();
    let name = format!("{}licensing_ffi{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    for dir in [deps.clone(), deps.parent().unwrap().to_owned()] {
        if dir.join(&name).exists() {
            return dir;
        }
    }
    panic!("{name} is not in {} or its parent: the root package dev-depends on licensing-ffi", deps.display());
}

/// Where the compiled programs go.
pub fn build_dir() -> PathBuf {
    let dir = deps_dir().parent().unwrap().join("ffi-programs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The static library, `liblicensing_ffi.a` (built beside the cdylib).
pub fn static_library() -> PathBuf {
    let name = format!("{}licensing_ffi{}", std::env::consts::DLL_PREFIX, ".a");
    let deps = deps_dir();
    [deps.clone(), deps.parent().unwrap().to_owned()]
        .into_iter()
        .map(|dir| dir.join(&name))
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("{name} is not in {} or its parent", deps.display()))
}

/// What a program links the static library with: the system libraries Rust's standard library
/// needs on Linux (`rustc --print native-static-libs` for a staticlib), as docs/sdk.md says.
pub const STATIC_LINK_FLAGS: &[&str] = &["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-lc"];

/// How a compiled program gets the library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linking {
    /// `-llicensing_ffi` with an rpath to [`library_dir`]: `liblicensing_ffi.so` at run time.
    Shared,
    /// [`static_library`] and [`STATIC_LINK_FLAGS`]: nothing of the library to find at run time.
    Static,
}

/// Compiles `sources` with `compiler` (`cc` or `c++`) and the sanitizers, linked to the library.
pub fn compile(compiler: &str, sources: &[&str], output: &str, flags: &[&str]) -> PathBuf {
    compile_linked(compiler, sources, output, flags, Linking::Shared)
}

/// As [`compile`], linked to the library as `linking` says.
pub fn compile_linked(compiler: &str, sources: &[&str], output: &str, flags: &[&str], linking: Linking) -> PathBuf {
    let out = build_dir().join(output);
    let mut command = std::process::Command::new(compiler);
    command
        .args(["-g", "-O1", "-Wall", "-Wextra", "-Werror", "-fsanitize=address", "-fno-omit-frame-pointer"])
        .args(flags)
        .arg(format!("-I{ROOT}/services/ffi/include"))
        .args(sources.iter().map(|s| format!("{ROOT}/{s}")));
    match linking {
        Linking::Shared => {
            let lib = library_dir();
            command
                .arg(format!("-L{}", lib.display()))
                .arg(format!("-Wl,-rpath,{}", lib.display()))
                .args(["-llicensing_ffi", "-lpthread"]);
        }
        Linking::Static => {
            command.arg(static_library()).args(STATIC_LINK_FLAGS);
        }
    }
    command.arg("-o").arg(&out);
    let result = command.output().unwrap_or_else(|e| panic!("{compiler} must be installed for this test: {e}"));
    assert!(
        result.status.success(),
        "{compiler} failed on {sources:?}:\n{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

fn ffi_test() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| compile("cc", &["services/ffi/tests/c/ffi_test.c"], "ffi_test", &["-std=c11"]))
}

/// `ffi_test.c` linked to `liblicensing_ffi.a`.
fn ffi_test_static() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        compile_linked("cc", &["services/ffi/tests/c/ffi_test.c"], "ffi_test_static", &["-std=c11"], Linking::Static)
    })
}

fn c_example() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| compile("cc", &["examples/c/floating_seat.c"], "floating_seat_c", &["-std=c11"]))
}

fn cpp_wrapper_test() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM
        .get_or_init(|| compile("c++", &["services/ffi/tests/cpp/wrapper_test.cpp"], "wrapper_test", &["-std=c++17"]))
}

fn cpp_example() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| compile("c++", &["examples/cpp/node_locked.cpp"], "node_locked_cpp", &["-std=c++17"]))
}

/// A running program whose stdout the test reads line by line.
pub struct Program {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every line so far, for failure messages.
    seen: Vec<String>,
    /// Lines no `line()` call has taken yet (the callback's thread prints concurrently, so
    /// lines may come in either order).
    pending: Vec<String>,
}

impl Program {
    pub fn start(mut command: Command) -> Self {
        command
            .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("the program starts");
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, stdin, lines, seen: vec![], pending: vec![] }
    }

    /// The first line not taken yet that starts with `prefix`, waiting at most `limit`.
    pub async fn line(&mut self, prefix: &str, limit: Duration) -> String {
        if let Some(i) = self.pending.iter().position(|l| l.starts_with(prefix)) {
            return self.pending.remove(i);
        }
        let found = tokio::time::timeout(limit, async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                self.seen.push(line.clone());
                if line.starts_with(prefix) {
                    return Some(line);
                }
                self.pending.push(line);
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!("no line starting with {prefix:?} within {limit:?}; output so far:\n{}", self.seen.join("\n")),
        }
    }

    pub async fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(format!("{command}\n").as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// Waits for a clean exit (status 0, no sanitizer report) and returns all of stdout.
    pub async fn finish(mut self) -> String {
        drop(self.stdin.take());
        while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line()).await {
            self.seen.push(line);
        }
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = tokio::time::timeout(Duration::from_secs(30), err.read_to_string(&mut stderr)).await;
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.unwrap().unwrap();
        let stdout = self.seen.join("\n");
        assert!(
            status.success() && !stderr.contains("Sanitizer"),
            "exit {status}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        );
        stdout
    }
}

/// The meter `exports`: `limit` a month, no overage.
fn exports_meter(limit: i64) -> licensing_proto::common::v1::Meter {
    use licensing_proto::common::v1::{Meter, MeterReset};
    Meter { code: "exports".into(), limit, overage: 0, reset: MeterReset::Monthly as i32 }
}

/// Runs `ffi_test <mode>` to its end with `env`; returns its output.
async fn run_c(mode: &str, env: &[(&str, String)]) -> String {
    run_program(ffi_test(), mode, env).await
}

/// Runs `program <mode>` (a build of `ffi_test.c`) to its end with `env`; returns its output.
async fn run_program(program: &Path, mode: &str, env: &[(&str, String)]) -> String {
    let mut command = Command::new(program);
    command.arg(mode).envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let output = Program::start(command).finish().await;
    assert!(output.contains("0 FAILURES"), "{output}");
    output
}

#[tokio::test]
async fn c_program_activates_validates_offline_with_the_server_stopped_and_misuse_gives_error_codes() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let (license_id, key, password) = issue_license(&app, &f, LicenseKind::NodeLocked, 3, |_| {}).await;
    let storage = tempfile::tempdir().unwrap();
    let env = vec![
        ("LICENSING_URL", format!("http://{}", app.addr)),
        ("LICENSING_PUBLIC_KEY", app.public_key().await),
        ("LICENSE_KEY", key),
        ("LICENSE_ID", license_id.clone()),
        ("LICENSE_PASSWORD", password),
        ("LICENSE_STORAGE", storage.path().join("license.json").display().to_string()),
    ];
    let misuse = run_c("misuse", &env).await;
    assert!(misuse.contains("MISUSE DONE"), "{misuse}");
    let activated = run_c("activate", &env).await;
    assert!(activated.contains(&format!("CERTIFICATE {license_id} seats=3 modules=1 render")), "{activated}");

    // The server is gone: validation falls back to the stored certificate.
    let _ = app.stop().await;
    let offline = run_c("offline", &env).await;
    assert!(offline.contains(&format!("CERTIFICATE {license_id}")), "{offline}");
}

#[tokio::test]
async fn c_program_keeps_a_seat_with_heartbeats_through_a_server_restart_and_checks_it_in() {
    let app = spawn_seat_app(Leases::Embedded).await;
    let f = fixture(&app).await;
    let (license_id, key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 1, |_| {}).await;
    let mut command = Command::new(ffi_test());
    command
        .arg("floating")
        .env("LICENSING_URL", format!("http://{}", app.addr))
        .env("LICENSING_PUBLIC_KEY", app.public_key().await)
        .env("LICENSE_KEY", &key);
    let mut program = Program::start(command);
    let first = program.line("CHECKED OUT", Duration::from_secs(10)).await;
    program.line("CALLBACK HELD", Duration::from_secs(5)).await;

    // Heartbeats keep the 1 s lease past several TTLs.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    program.send("state").await;
    let state = program.line("STATE", Duration::from_secs(5)).await;
    assert_eq!(state, format!("STATE HELD {}", first.trim_start_matches("CHECKED OUT ")));
    assert_eq!(live_leases(&app, &license_id).await.len(), 1);

    // The server goes away: the callback says reconnecting; after the restart, held again.
    let addr = app.addr;
    let (dir, mut env) = app.stop().await;
    program.line("CALLBACK RECONNECTING", Duration::from_secs(10)).await;
    env.insert("LICENSING_LISTEN_ADDR".into(), addr.to_string());
    let app = spawn_with_env(Backend::Sqlite, dir, env).await;
    program.line("CALLBACK HELD", Duration::from_secs(15)).await;
    program.send("state").await;
    assert!(program.line("STATE", Duration::from_secs(5)).await.starts_with("STATE HELD lse_"));
    assert_eq!(live_leases(&app, &license_id).await.len(), 1, "one seat, not two");

    program.send("checkin").await;
    assert_eq!(program.line("CHECKED IN", Duration::from_secs(10)).await, "CHECKED IN 1 RELEASED");
    assert_eq!(live_leases(&app, &license_id).await.len(), 0);
    program.send("quit").await;
    let output = program.finish().await;
    assert!(output.contains("FLOATING DONE") && output.contains("0 FAILURES"), "{output}");
}

#[tokio::test]
async fn c_program_waits_for_a_seat_with_timeout_and_cancellation_and_borrows_one() {
    use licensing_proto::seat::v1 as seat;
    let app = spawn_seat_app(Leases::Embedded).await;
    let f = fixture(&app).await;
    let (license_id, key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 1, |_| {}).await;
    seat_client(&app)
        .await
        .update_seat_policy(admin_req(seat::UpdateSeatPolicyRequest {
            license_id: license_id.clone(),
            policy: Some(seat::SeatPolicy {
                max_borrow: Some(prost_types::Duration { seconds: 86_400, nanos: 0 }),
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let env = vec![
        ("LICENSING_URL", format!("http://{}", app.addr)),
        ("LICENSING_PUBLIC_KEY", app.public_key().await),
        ("LICENSE_KEY", key),
        ("BORROW_FILE", files.path().join("borrowed.json").display().to_string()),
    ];
    let waited = run_c("wait", &env).await;
    assert!(waited.contains("WAIT TIMED OUT WAIT_TIMED_OUT") && waited.contains("WAIT DONE"), "{waited}");
    let borrowed = run_c("borrow", &env).await;
    assert!(borrowed.contains("BORROW DONE"), "{borrowed}");
    assert_eq!(live_leases(&app, &license_id).await.len(), 0);
}

#[tokio::test]
async fn the_c_example_holds_a_seat_and_gives_it_back_on_ctrl_c() {
    let app = spawn_seat_app(Leases::Embedded).await;
    let f = fixture(&app).await;
    let (license_id, key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 1, |_| {}).await;
    let mut command = Command::new(c_example());
    command
        .env("LICENSING_URL", format!("http://{}", app.addr))
        .env("LICENSING_PUBLIC_KEY", app.public_key().await)
        .env("LICENSE_KEY", &key);
    let mut program = Program::start(command);
    program.line("SEAT HELD", Duration::from_secs(10)).await;
    assert_eq!(live_leases(&app, &license_id).await.len(), 1);
    Command::new("kill").args(["-INT", &program.pid().to_string()]).status().await.unwrap();
    assert_eq!(program.line("SEAT RELEASED", Duration::from_secs(10)).await, "SEAT RELEASED true");
    program.finish().await;
    assert_eq!(live_leases(&app, &license_id).await.len(), 0);
}

#[tokio::test]
async fn the_cpp_wrapper_checks_in_from_the_destructor_throws_the_reason_and_records_metered_use() {
    let app = spawn_seat_app(Leases::Embedded).await;
    let f = fixture(&app).await;
    let (seat_license, seat_key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 1, |_| {}).await;
    let (license_id, _, password) = issue_license(&app, &f, LicenseKind::NodeLocked, 2, |_| {}).await;
    let (_, meter_key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |r| {
        r.meters = vec![exports_meter(3)];
    })
    .await;
    let storage = tempfile::tempdir().unwrap();
    let mut command = Command::new(cpp_wrapper_test());
    command
        .env("LICENSING_URL", format!("http://{}", app.addr))
        .env("LICENSING_PUBLIC_KEY", app.public_key().await)
        .env("SEAT_KEY", seat_key)
        .env("LICENSE_ID", &license_id)
        .env("LICENSE_PASSWORD", password)
        .env("LICENSE_STORAGE", storage.path().join("license.json"))
        .env("METER_KEY", meter_key);
    let output = Program::start(command).finish().await;
    assert!(output.contains("0 FAILURES"), "{output}");
    assert_eq!(live_leases(&app, &seat_license).await.len(), 0);
}

#[tokio::test]
async fn the_cpp_example_activates_then_validates_offline_with_the_server_stopped() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |_| {}).await;
    let storage = tempfile::tempdir().unwrap();
    let public_key = app.public_key().await;
    let url = format!("http://{}", app.addr);
    let run = |expect: &'static str| {
        let mut command = Command::new(cpp_example());
        command
            .env("LICENSING_URL", &url)
            .env("LICENSING_PUBLIC_KEY", &public_key)
            .env("LICENSE_KEY", &key)
            .env("LICENSE_STORAGE", storage.path().join("license.json"));
        let license_id = license_id.clone();
        async move {
            let mut program = Program::start(command);
            let line = program.line("LICENSE VALID", Duration::from_secs(10)).await;
            assert!(line.starts_with(&format!("LICENSE VALID {expect} {license_id} until ")), "{line}");
            Command::new("kill").args(["-INT", &program.pid().to_string()]).status().await.unwrap();
            program.line("BYE", Duration::from_secs(10)).await;
            program.finish().await
        }
    };
    let first = run("online").await;
    assert!(first.contains("ACTIVATED"), "{first}");
    let _ = app.stop().await;
    let offline = run("offline").await;
    assert!(!offline.contains("ACTIVATED"), "{offline}");
}

#[tokio::test]
async fn c_program_activates_over_mutual_tls_and_a_wrong_ca_fails_with_unreachable() {
    let pki = crate::tls::Pki::new();
    let app = crate::tls::tls_app(&pki, true, &[]).await;
    // The harness's own channels present the client certificate, so the set-up is as usual.
    let f = fixture(&app).await;
    let (license_id, key, password) = issue_license(&app, &f, LicenseKind::NodeLocked, 2, |_| {}).await;
    let storage = tempfile::tempdir().unwrap();
    let file = |name: &str| pki.path(name).display().to_string();
    let env = vec![
        ("LICENSING_URL", format!("https://localhost:{}", app.addr.port())),
        ("LICENSING_PUBLIC_KEY", app.public_key().await),
        ("LICENSE_KEY", key),
        ("LICENSE_ID", license_id.clone()),
        ("LICENSE_PASSWORD", password),
        ("LICENSE_STORAGE", storage.path().join("license.json").display().to_string()),
        ("LICENSING_TLS_CA", file("ca.pem")),
        ("LICENSING_TLS_CLIENT_CERT", file("client.pem")),
        ("LICENSING_TLS_CLIENT_KEY", file("client-key.pem")),
    ];
    let activated = run_c("activate", &env).await;
    assert!(activated.contains(&format!("CERTIFICATE {license_id} seats=2 modules=1 render")), "{activated}");

    // A product that trusts another CA refuses the server's certificate: UNREACHABLE (status
    // 3), with the reason in the message, and no crash or leak (the sanitizers watch).
    let with = |name: &'static str, value: String| {
        let mut changed: Vec<_> = env.iter().filter(|(k, _)| *k != name).cloned().collect();
        changed.push((name, value));
        changed
    };
    let wrong_ca = run_c("refused", &with("LICENSING_TLS_CA", file("rogue-ca.pem"))).await;
    let line = wrong_ca.lines().find(|l| l.starts_with("REFUSED")).unwrap_or_default();
    assert!(line.starts_with("REFUSED 3 UNREACHABLE: the licensing server is unreachable"), "{wrong_ca}");
    assert!(line.to_lowercase().contains("certificate"), "the message says why: {line}");
    // A client certificate of another CA: the server refuses the handshake.
    let rogue_client = with("LICENSING_TLS_CLIENT_CERT", file("rogue-client.pem"));
    let rogue_client: Vec<_> = rogue_client
        .into_iter()
        .map(|(k, v)| if k == "LICENSING_TLS_CLIENT_KEY" { (k, file("rogue-client-key.pem")) } else { (k, v) })
        .collect();
    let refused = run_c("refused", &rogue_client).await;
    assert!(refused.contains("REFUSED 3 UNREACHABLE"), "{refused}");
}

#[tokio::test]
async fn c_program_linked_to_the_static_library_activates() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let (license_id, key, password) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |_| {}).await;
    let program = ffi_test_static();
    // The program carries the library: it needs no liblicensing_ffi.so at run time.
    let dynamic = std::process::Command::new("readelf").arg("-d").arg(program).output().unwrap();
    assert!(dynamic.status.success());
    let dynamic = String::from_utf8_lossy(&dynamic.stdout);
    assert!(dynamic.contains("NEEDED") && !dynamic.contains("licensing_ffi"), "{dynamic}");
    let storage = tempfile::tempdir().unwrap();
    let env = vec![
        ("LICENSING_URL", format!("http://{}", app.addr)),
        ("LICENSING_PUBLIC_KEY", app.public_key().await),
        ("LICENSE_KEY", key),
        ("LICENSE_ID", license_id.clone()),
        ("LICENSE_PASSWORD", password),
        ("LICENSE_STORAGE", storage.path().join("license.json").display().to_string()),
    ];
    let activated = run_program(program, "activate", &env).await;
    assert!(activated.contains(&format!("CERTIFICATE {license_id} seats=1 modules=1 render")), "{activated}");
}

#[tokio::test]
async fn c_program_records_metered_use_once_per_key_up_to_the_limit_and_reads_the_certificate() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let (license_id, key, password) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |r| {
        r.meters = vec![exports_meter(10)];
        r.grace_period = Some(prost_types::Duration { seconds: 3 * 86_400, nanos: 0 });
    })
    .await;
    let storage = tempfile::tempdir().unwrap();
    let env = vec![
        ("LICENSING_URL", format!("http://{}", app.addr)),
        ("LICENSING_PUBLIC_KEY", app.public_key().await),
        ("LICENSE_KEY", key),
        ("LICENSE_ID", license_id.clone()),
        ("LICENSE_PASSWORD", password),
        ("LICENSE_STORAGE", storage.path().join("license.json").display().to_string()),
    ];
    let output = run_c("meters", &env).await;
    for expected in [
        "RECORDED used=4 limit=10 overage=0 remaining=6 resets=1",
        "REPLAYED 1 used=4",
        "USAGE used=10 limit=10 overage=0 remaining=0 resets=1",
        "CERTIFICATE METER used=10 limit=10 overage=0 remaining=0 resets=1",
        "METERS DONE",
    ] {
        assert!(output.lines().any(|l| l == expected), "{expected:?} in:\n{output}");
    }
    let limit = output.lines().find(|l| l.starts_with("LIMIT ")).unwrap_or_default();
    assert!(limit.starts_with("LIMIT METER_LIMIT_REACHED: ") && limit.contains("0 left"), "{output}");
    let grace = output.lines().find(|l| l.starts_with("GRACE ")).unwrap_or_default();
    let numbers: Vec<i64> = grace.split(' ').filter_map(|w| w.parse().ok()).collect();
    assert_eq!(numbers.len(), 2, "{output}");
    assert_eq!(numbers[0] - numbers[1], 3 * 86_400_000, "the grace period ends 3 days after expiry: {grace}");
}

/// The Python of the virtualenv `scripts/test.sh` makes (`target/tools/python`, with pytest and
/// setuptools), named by `LICENSING_PYTHON`; `None` (with `CI` set: a failure) when it is missing.
fn python() -> Option<String> {
    let python = std::env::var("LICENSING_PYTHON").unwrap_or_else(|_| format!("{ROOT}/target/tools/python/bin/python"));
    let ready = std::process::Command::new(&python)
        .args(["-c", "import pytest, setuptools, wheel"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ready {
        return Some(python);
    }
    let why = format!("{python} with pytest, setuptools and wheel is missing (./scripts/test.sh makes it)");
    if std::env::var_os("CI").is_some() {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

fn run_python(python: &str, args: &[&str], cwd: &Path) -> String {
    let out = std::process::Command::new(python).args(args).current_dir(cwd).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{python} {args:?}:\n{text}");
    text
}

#[tokio::test]
async fn the_python_package_builds_as_a_wheel_and_passes_pytest_against_a_real_server() {
    use licensing_proto::seat::v1 as seat;
    let Some(python) = python() else { return };
    // A wheel with the library inside, built from a copy of the package, installed with pip.
    let work = tempfile::tempdir().unwrap();
    let package = work.path().join("package");
    let copied = std::process::Command::new("cp")
        .args(["-r", &format!("{ROOT}/services/ffi/python"), &package.display().to_string()])
        .status()
        .unwrap();
    assert!(copied.success());
    let library = format!("{}licensing_ffi{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    std::fs::copy(library_dir().join(&library), package.join("src/licensing").join(&library)).unwrap();
    let dist = work.path().join("dist");
    let (package_arg, dist_arg) = (package.display().to_string(), dist.display().to_string());
    run_python(
        &python,
        &["-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", &dist_arg, &package_arg],
        work.path(),
    );
    let wheel = std::fs::read_dir(&dist).unwrap().next().unwrap().unwrap().path();
    assert!(wheel.to_string_lossy().ends_with(".whl"), "{}", wheel.display());
    run_python(
        &python,
        &["-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", &wheel.display().to_string()],
        work.path(),
    );

    // The licenses, issued on a server that is then stopped and handed to pytest to run.
    let app = spawn_seat_app(Leases::Embedded).await;
    let f = fixture(&app).await;
    let (_, seat_key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 1, |_| {}).await;
    let (_, lost_key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 1, |_| {}).await;
    let (borrow_id, borrow_key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 1, |_| {}).await;
    let (node_locked_id, _, password) = issue_license(&app, &f, LicenseKind::NodeLocked, 2, |_| {}).await;
    let (_, meter_key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |r| {
        r.meters = vec![exports_meter(3)];
        r.grace_period = Some(prost_types::Duration { seconds: 3 * 86_400, nanos: 0 });
    })
    .await;
    seat_client(&app)
        .await
        .update_seat_policy(admin_req(seat::UpdateSeatPolicyRequest {
            license_id: borrow_id,
            policy: Some(seat::SeatPolicy {
                max_borrow: Some(prost_types::Duration { seconds: 86_400, nanos: 0 }),
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
    let public_key = app.public_key().await;
    let (data_dir, env) = app.stop().await;
    // pytest writes to a file, so a run that hangs still shows how far it got (faulthandler
    // dumps every thread's stack after a minute in one test).
    let log = work.path().join("pytest.log");
    let mut pytest = tokio::process::Command::new(&python)
        .args(["-m", "pytest", "-v", "-p", "no:cacheprovider", "-o", "faulthandler_timeout=60"])
        .arg(format!("{ROOT}/services/ffi/python/tests"))
        .current_dir(work.path())
        .env("LICENSING_SERVER_BIN", env!("CARGO_BIN_EXE_licensing-server"))
        .env("LICENSING_SERVER_ENV", serde_json::to_string(&env).unwrap())
        .env("LICENSING_PUBLIC_KEY", public_key)
        .env("SEAT_KEY", seat_key)
        .env("LOST_KEY", lost_key)
        .env("BORROW_KEY", borrow_key)
        .env("NODE_LOCKED_ID", node_locked_id)
        .env("NODE_LOCKED_PASSWORD", password)
        .env("METER_KEY", meter_key)
        .env("PYTHON_EXAMPLE", format!("{ROOT}/examples/python/floating_seat.py"))
        .env_remove("LICENSING_LIBRARY")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(240), pytest.wait()).await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|_| panic!("pytest did not end within 240 s:\n{text}")).unwrap();
    assert!(status.success() && text.contains(" passed"), "pytest:\n{text}");
    assert!(!text.contains("skipped") && !text.contains("SKIPPED"), "{text}");
    drop(data_dir);
}
