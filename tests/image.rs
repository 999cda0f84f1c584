//! Keeps deploy/Dockerfile honest without a Docker engine: its final stage's default command,
//! environment, ports, volume and health check are the ones the README documents, and the
//! environment makes the servers listen on every interface of the container (the binaries' own
//! defaults are loopback, which nothing outside a container reaches). A `.dockerignore` keeps
//! `target/` out of the build context.

use licensing_runtime::config::Config;
use std::collections::HashMap;

fn read(file: &str) -> String {
    std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// One instruction of a Dockerfile: its keyword (upper case) and its arguments, with line
/// continuations joined and comments left out.
#[derive(Debug)]
pub(crate) struct Instruction {
    pub(crate) keyword: String,
    pub(crate) args: String,
}

/// The instructions of the Dockerfile's final stage (after its last `FROM`).
pub(crate) fn final_stage() -> Vec<Instruction> {
    let text = read("deploy/Dockerfile");
    let mut instructions = vec![];
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') && current.is_empty() || trimmed.is_empty() && current.is_empty() {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            current.push_str(continued);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
        instructions.push(Instruction { keyword: keyword.to_uppercase(), args: args.trim().to_owned() });
        current.clear();
    }
    let last_from = instructions.iter().rposition(|i| i.keyword == "FROM").expect("a FROM");
    instructions.split_off(last_from + 1)
}

/// The final stage's `ENV` settings (`KEY=value` pairs).
pub(crate) fn image_env() -> HashMap<String, String> {
    final_stage()
        .iter()
        .filter(|i| i.keyword == "ENV")
        .flat_map(|i| {
            i.args
                .split_whitespace()
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("ENV KEY=value");
                    (k.to_owned(), v.to_owned())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A JSON-array (exec form) instruction's words.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("exec form {args}: {e}"))
}

fn one(stage: &[Instruction], keyword: &str) -> String {
    let found: Vec<&Instruction> = stage.iter().filter(|i| i.keyword == keyword).collect();
    assert_eq!(found.len(), 1, "one {keyword} in the final stage: {found:?}");
    found[0].args.clone()
}

#[test]
fn the_images_default_command_env_and_ports_are_the_ones_the_readme_documents() {
    let stage = final_stage();
    let env = image_env();
    let cmd = exec_form(&one(&stage, "CMD"));
    let exposed: Vec<u16> = one(&stage, "EXPOSE").split_whitespace().map(|p| p.parse().unwrap()).collect();
    let volume = exec_form(&one(&stage, "VOLUME"));
    assert_eq!(volume, [env["LICENSING_DATA_DIR"].clone()], "the data directory is the volume");

    // What the servers make of that environment: every interface, on the exposed ports.
    let lookup: HashMap<String, String> = env.clone();
    let config = Config::from_lookup(&lookup, "127.0.0.1:50051", "licensing-server").unwrap();
    assert!(config.listen_addr.ip().is_unspecified(), "gRPC on every interface: {}", config.listen_addr);
    let metrics = config.metrics.resolve("127.0.0.1:9464").expect("metrics on");
    let portal = config.portal.resolve("127.0.0.1:8080").expect("portal on");
    for (what, addr) in [("gRPC", config.listen_addr), ("metrics", metrics), ("portal", portal)] {
        assert!(addr.ip().is_unspecified(), "{what} on every interface: {addr}");
        assert!(exposed.contains(&addr.port()), "{what} port {} is exposed: {exposed:?}", addr.port());
    }
    assert_eq!(exposed.len(), 3, "{exposed:?}");

    // The health check probes the port served, with the image's own binary.
    let health = one(&stage, "HEALTHCHECK");
    let probe = exec_form(health.split_once("CMD").expect("HEALTHCHECK ... CMD [...]").1.trim());
    assert_eq!(probe, ["healthcheck".to_owned(), format!("127.0.0.1:{}", config.listen_addr.port())]);

    // Every binary is copied into the image, licensectl and healthcheck included.
    let dockerfile = read("deploy/Dockerfile");
    let copied: Vec<&str> = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("&& cp "))
        .expect("the build stage copies the binaries out")
        .split_whitespace()
        .collect();
    for binary in ["licensing-server", "account", "activation", "seat", "healthcheck", "licensectl"] {
        assert!(copied.contains(&binary), "the image has {binary}: {copied:?}");
    }

    // The README documents that command: `docker run -p H:C ... licensing:<tag> [command]`.
    let readme = read("README.md");
    let run = readme
        .lines()
        .find(|l| l.trim_start().starts_with("docker run "))
        .expect("the README shows how to run the image");
    let words: Vec<&str> = run.split_whitespace().collect();
    let published: Vec<u16> =
        words.windows(2).filter(|w| w[0] == "-p").map(|w| w[1].rsplit(':').next().unwrap().parse().unwrap()).collect();
    assert!(published.contains(&config.listen_addr.port()), "the README publishes the gRPC port: {run}");
    for port in &published {
        assert!(exposed.contains(port), "the README publishes {port}, which the image exposes: {run}");
    }
    let mounts: Vec<&str> = words.windows(2).filter(|w| w[0] == "-v").map(|w| w[1]).collect();
    assert!(
        mounts.iter().any(|m| m.ends_with(&format!(":{}", env["LICENSING_DATA_DIR"]))),
        "the README keeps the data volume: {run}"
    );
    let image = words.iter().position(|w| w.starts_with("licensing:")).expect("the image in the README");
    let tag = words[image].trim_start_matches("licensing:");
    assert_eq!(tag, env!("CARGO_PKG_VERSION"), "the README runs this version's tag");
    let command: Vec<String> = words[image + 1..].iter().map(|w| w.to_string()).collect();
    assert!(command.is_empty() || command == cmd, "the README's command is the image's default: {run}");
    assert_eq!(cmd, ["licensing-server"], "the all-in-one server by default");
    for (var, value) in &env {
        if var.ends_with("_ADDR") {
            assert!(readme.contains(&format!("`{value}`")), "the README documents {var}={value}");
        }
    }

    // The build context leaves target/ out.
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/" || l.trim() == "target"), "{ignore}");
    // The build stage caches the registry and target/ between builds.
    assert!(dockerfile.contains("--mount=type=cache,target=/usr/local/cargo/registry"));
    assert!(dockerfile.contains("--mount=type=cache,target=/src/target"));
}
