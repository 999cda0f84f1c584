//! Every binary explains itself: `--help` and `--version` answer at once and start, create and
//! print nothing else; the options are the configuration variables, the README's table lists
//! them; `healthcheck` says what failed.

use licensing_runtime::config::{client_args, flag_of, server_args, VARIABLES};
use std::process::Output;
use std::time::Duration;

const SERVERS: &[(&str, &str)] = &[
    ("licensing-server", env!("CARGO_BIN_EXE_licensing-server")),
    ("account", env!("CARGO_BIN_EXE_account")),
    ("activation", env!("CARGO_BIN_EXE_activation")),
    ("seat", env!("CARGO_BIN_EXE_seat")),
];
const CLIENTS: &[(&str, &str)] =
    &[("healthcheck", env!("CARGO_BIN_EXE_healthcheck")), ("licensectl", env!("CARGO_BIN_EXE_licensectl"))];

/// Runs `binary` with `args` in `cwd`, with no `LICENSING_*` variables; it must end within 20 s.
async fn run(binary: &str, args: &[&str], cwd: &std::path::Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).current_dir(cwd).args(args);
    cmd.envs(env.iter().copied()).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{binary} {args:?} did not end: it must answer, not start serving"))
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn every_binary_answers_help_and_version_without_starting_anything() {
    let version = env!("CARGO_PKG_VERSION");
    for &(name, binary) in SERVERS.iter().chain(CLIENTS) {
        let cwd = tempfile::tempdir().unwrap();
        for flag in ["--help", "-h"] {
            let out = run(binary, &[flag], cwd.path(), &[]).await;
            let help = text(&out.stdout);
            assert!(out.status.success(), "{name} {flag}: {}{}", help, text(&out.stderr));
            assert!(help.contains(&format!("Usage: {name}")), "{name} {flag}: {help}");
            assert!(!help.contains("admin token was created"), "{name} {flag} minted a token: {help}");
            let first = help.lines().next().unwrap_or_default();
            assert!(first.len() > 20, "{name} {flag} begins by saying what it is: {help}");
        }
        for flag in ["--version", "-V"] {
            let out = run(binary, &[flag], cwd.path(), &[]).await;
            assert!(out.status.success(), "{name} {flag}: {}", text(&out.stderr));
            assert_eq!(text(&out.stdout).trim(), format!("{name} {version}"), "{name} {flag}");
        }
        let left: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "{name} --help/--version created {left:?} (e.g. ./data)");
    }
}

#[tokio::test]
async fn the_servers_options_are_the_configuration_variables_and_secrets_stay_hidden() {
    let secret = "adm_SECRETSECRETSECRETSECRET0123";
    for &(name, binary) in SERVERS {
        let cwd = tempfile::tempdir().unwrap();
        let out = run(binary, &["--help"], cwd.path(), &[("LICENSING_ADMIN_TOKEN", secret)]).await;
        let help = text(&out.stdout);
        for arg in server_args() {
            let var = arg.get_id().as_str();
            assert!(help.contains(&format!("--{}", flag_of(var))), "{name} --help lacks --{}", flag_of(var));
            assert!(help.contains(&format!("[env: {var}]")), "{name} --help lacks {var}");
        }
        assert!(!help.contains(secret), "{name} --help shows a variable's value");
        // A flag is its variable: a bad value is refused naming the variable, before anything starts.
        let out = run(binary, &["--request-timeout-ms", "soon"], cwd.path(), &[]).await;
        assert!(!out.status.success(), "{name}");
        assert!(text(&out.stderr).contains("LICENSING_REQUEST_TIMEOUT_MS"), "{name}: {}", text(&out.stderr));
        let out = run(binary, &["--no-such-option"], cwd.path(), &[]).await;
        assert_eq!(out.status.code(), Some(2), "{name}: an unknown option is a usage error");
    }
    for &(name, binary) in CLIENTS {
        let help = text(&run(binary, &["--help"], tempfile::tempdir().unwrap().path(), &[]).await.stdout);
        for arg in client_args() {
            assert!(help.contains(&format!("[env: {}]", arg.get_id())), "{name} --help lacks {}", arg.get_id());
        }
    }
}

#[test]
fn the_readme_configuration_table_is_the_list_of_variables() {
    // The table's rows, in the README's words (code spans and links as plain text), are the
    // variables and their meanings as `--help` shows them.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let plain = |cell: &str| {
        let mut out = String::new();
        let mut rest = cell.replace('`', "");
        while let Some(open) = rest.find('[') {
            let Some((label, after)) = rest[open + 1..].split_once("](") else { break };
            let Some((_, tail)) = after.split_once(')') else { break };
            out.push_str(&rest[..open]);
            out.push_str(label);
            rest = tail.to_owned();
        }
        out + &rest
    };
    let table: Vec<(String, String)> = readme
        .lines()
        .skip_while(|l| *l != "## Configuration")
        .skip_while(|l| !l.starts_with("| Variable |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            assert_eq!(cells.len(), 3, "a row is variable | default | meaning: {l}");
            (plain(cells[0]), plain(cells[2]))
        })
        .collect();
    let listed: Vec<(String, String)> = VARIABLES.iter().map(|(v, m)| ((*v).to_owned(), (*m).to_owned())).collect();
    for (var, meaning) in &listed {
        let row = table.iter().find(|(v, _)| v == var);
        assert!(row.is_some(), "README's configuration table lacks {var}");
        assert_eq!(&row.unwrap().1, meaning, "README and VARIABLES (--help) differ on {var}");
    }
    for (var, _) in &table {
        assert!(listed.iter().any(|(v, _)| v == var), "README documents {var}, which no binary reads");
    }
}

#[tokio::test]
async fn healthcheck_says_what_failed() {
    let cwd = tempfile::tempdir().unwrap();
    let healthcheck = env!("CARGO_BIN_EXE_healthcheck");
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let out = run(healthcheck, &[&addr], cwd.path(), &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr).trim(), format!("connection refused by {addr}: is the server running there?"));
    // A setting in error is named, not taken for the server closing the connection.
    let out = run(healthcheck, &[&addr], cwd.path(), &[("LICENSING_TLS_CA", "/nonexistent/ca.pem")]).await;
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stderr);
    assert!(
        said.starts_with("healthcheck: configuration: LICENSING_TLS_CA: cannot read /nonexistent/ca.pem"),
        "{said}"
    );
    assert_eq!(said.trim().lines().count(), 1, "{said}");
}
