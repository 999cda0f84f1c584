//! The protobuf API keeps Buf's conventions and its wire compatibility: `buf lint` (buf.yaml) finds
//! nothing and `buf format` would change nothing, and `buf breaking` finds nothing against the
//! previous commit of main, so a client generated from an older proto keeps working. The Buf CLI
//! comes from PyPI (`buf-bin`, installed by scripts/test.sh, which sets `BUF`).
//!
//! The previous commit: `BUF_BREAKING_AGAINST` (any git revision) when set; else, on a branch, the
//! commit it forked from main (`git merge-base HEAD main`); on main itself (CI's clone), `HEAD~1`.
//! A shallow clone is deepened by one commit first; a repository with no earlier commit has
//! nothing to compare with.

use crate::common::tool;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// RPCs whose request or response message was renamed on purpose, as (old, new) full names. Such
/// a rename changes nothing on the wire as long as both messages have the same fields, which
/// `renamed_messages_keep_their_fields` checks against the baseline; any other changed RPC type
/// is a finding.
const RENAMED: &[(&str, &str)] = &[
    // Buf's RPC_REQUEST_STANDARD_NAME: AdminService's request and response carry its name, since
    // AccountService/AssociateLicense has the plain names.
    ("licensing.account.v1.AdminAssociateLicenseRequest", "licensing.account.v1.AdminServiceAssociateLicenseRequest"),
    ("licensing.account.v1.AdminAssociateLicenseResponse", "licensing.account.v1.AdminServiceAssociateLicenseResponse"),
    // Buf's RPC_REQUEST_RESPONSE_UNIQUE: AccountService/GetMyUsageReport reused SeatService's messages.
    ("licensing.seat.v1.GetUsageReportRequest", "licensing.account.v1.GetMyUsageReportRequest"),
    ("licensing.seat.v1.GetUsageReportResponse", "licensing.account.v1.GetMyUsageReportResponse"),
];

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).current_dir(root()).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The commit to compare with (see the module's documentation), or `None` when there is none.
fn baseline() -> Option<String> {
    if let Ok(revision) = std::env::var("BUF_BREAKING_AGAINST") {
        let commit = git(&["rev-parse", "--verify", &format!("{revision}^{{commit}}")]);
        return Some(commit.unwrap_or_else(|| panic!("BUF_BREAKING_AGAINST={revision} is no commit here")));
    }
    let head = git(&["rev-parse", "HEAD"]).expect("a git checkout (buf breaking compares with git history)");
    if let Some(fork) = git(&["merge-base", "HEAD", "main"]).filter(|fork| *fork != head) {
        return Some(fork);
    }
    let parent = || git(&["rev-parse", "--verify", "-q", "HEAD~1^{commit}"]);
    if parent().is_none() && git(&["rev-parse", "--is-shallow-repository"]).as_deref() == Some("true") {
        let deepened = git(&["fetch", "--quiet", "--deepen=1"]);
        assert!(
            deepened.is_some() || std::env::var_os("CI").is_none(),
            "a shallow clone whose previous commit cannot be fetched: clone with history (or set BUF_BREAKING_AGAINST)"
        );
    }
    parent()
}

/// The baseline's proto/ directory, extracted into `dir`.
fn extract_protos(commit: &str, dir: &Path) {
    let archive = Command::new("git")
        .args(["archive", "--format=tar", commit, "proto"])
        .current_dir(root())
        .output()
        .expect("git archive");
    assert!(archive.status.success(), "git archive {commit}: {}", String::from_utf8_lossy(&archive.stderr));
    let mut tar =
        Command::new("tar").args(["-x", "-C"]).arg(dir).stdin(std::process::Stdio::piped()).spawn().expect("tar");
    std::io::Write::write_all(tar.stdin.as_mut().unwrap(), &archive.stdout).unwrap();
    assert!(tar.wait().unwrap().success(), "tar -x of {commit}'s proto/");
}

fn run(buf: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(buf).args(args).current_dir(root()).output().expect("run buf");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// Every message of a `buf build` image (JSON), by full name, as its fields' wire and JSON
/// identity: (number, label, type, type name, JSON name), sorted by number.
fn messages(buf: &str, input: &str) -> std::collections::HashMap<String, Vec<String>> {
    let (ok, json) = run(buf, &["build", input, "-o", "-#format=json"]);
    assert!(ok, "buf build {input}: {json}");
    let image: Value = serde_json::from_str(&json).expect("buf build's JSON image");
    let mut out = std::collections::HashMap::new();
    fn walk(prefix: &str, message: &Value, out: &mut std::collections::HashMap<String, Vec<String>>) {
        let name = format!("{prefix}.{}", message["name"].as_str().unwrap());
        let mut fields: Vec<(i64, String)> = message["field"]
            .as_array()
            .map(|fields| {
                fields
                    .iter()
                    .map(|f| {
                        let number = f["number"].as_i64().unwrap();
                        (number, format!("{number} {} {} {} {}", f["label"], f["type"], f["typeName"], f["jsonName"]))
                    })
                    .collect()
            })
            .unwrap_or_default();
        fields.sort();
        for nested in message["nestedType"].as_array().into_iter().flatten() {
            walk(&name, nested, out);
        }
        out.insert(name, fields.into_iter().map(|(_, f)| f).collect());
    }
    for file in image["file"].as_array().unwrap() {
        let package = file["package"].as_str().unwrap_or_default();
        for message in file["messageType"].as_array().into_iter().flatten() {
            walk(package, message, &mut out);
        }
    }
    out
}

#[test]
fn buf_lint_finds_nothing() {
    let Some(buf) = tool("BUF", "buf", "--version") else { return };
    let (ok, report) = run(&buf, &["lint"]);
    assert!(ok && report.trim().is_empty(), "buf lint (buf.yaml):\n{report}");
    let (ok, diff) = run(&buf, &["format", "--diff", "--exit-code"]);
    assert!(ok, "buf format: the protos are not formatted as `buf format -w` writes them:\n{diff}");
}

#[test]
fn buf_breaking_finds_nothing_against_the_previous_commit() {
    let Some(buf) = tool("BUF", "buf", "--version") else { return };
    let Some(commit) = baseline() else {
        eprintln!("no earlier commit: nothing for buf breaking to compare with");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    extract_protos(&commit, dir.path());
    let against = dir.path().join("proto").display().to_string();
    let (ok, report) = run(&buf, &["breaking", "--against", &against, "--error-format", "json"]);
    if ok {
        return;
    }
    let before = messages(&buf, &against);
    let now = messages(&buf, ".");
    let mut findings = Vec::new();
    for line in report.lines().filter(|l| !l.trim().is_empty()) {
        let finding: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("buf breaking: {report}"));
        let rule = finding["type"].as_str().unwrap_or_default();
        let message = finding["message"].as_str().unwrap_or_default();
        let renamed = RENAMED.iter().find(|(old, new)| message.contains(&format!("from \"{old}\" to \"{new}\"")));
        match renamed {
            Some((old, new)) if rule == "RPC_SAME_REQUEST_TYPE" || rule == "RPC_SAME_RESPONSE_TYPE" => {
                // Accepted only while the new message is the old one on the wire.
                assert_eq!(
                    before.get(*old),
                    now.get(*new),
                    "{new} must have exactly the fields {old} had at {commit} (numbers, types, JSON names)"
                );
            }
            _ => findings.push(format!("{}:{}: {rule}: {message}", finding["path"], finding["start_line"])),
        }
    }
    assert!(findings.is_empty(), "buf breaking against {commit}:\n{}", findings.join("\n"));
}

/// The portal's usage report messages are the administrator's, field for field, so the two RPCs
/// stay interchangeable whatever the baseline.
#[test]
fn renamed_messages_keep_their_fields() {
    let Some(buf) = tool("BUF", "buf", "--version") else { return };
    let now = messages(&buf, ".");
    for (seat, account) in [
        ("licensing.seat.v1.GetUsageReportRequest", "licensing.account.v1.GetMyUsageReportRequest"),
        ("licensing.seat.v1.GetUsageReportResponse", "licensing.account.v1.GetMyUsageReportResponse"),
    ] {
        assert!(now.contains_key(seat), "{seat}");
        assert_eq!(now.get(seat), now.get(account), "{account} is {seat} on the wire");
    }
}
