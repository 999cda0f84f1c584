//! Keeps the Kubernetes manifests in deploy/k8s from rotting: they pass the Kubernetes API schema
//! (`kubernetes-validate`, from PyPI, installed by scripts/test.sh), and they agree with the
//! code and with docker-compose.yml: the ports the services listen on, gRPC health probes on
//! those ports, only variables the servers read, the Secret's keys documented, the image's user
//! and data directory, selectors that select, resources requested, drain time within the grace.

use licensing_runtime::config::VARIABLES;
use serde::Deserialize as _;
use serde_yaml::Value;
use std::collections::HashMap;

const SERVICES: [&str; 3] = ["account", "activation", "seat"];

fn path(file: &str) -> String {
    format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// Every document of a manifest file.
fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(path(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_yaml::Deserializer::from_str(&text).map(|d| Value::deserialize(d).unwrap()).collect()
}

/// The resources kustomization.yaml applies, by (kind, name).
fn resources() -> HashMap<(String, String), Value> {
    let kustomization = documents("deploy/k8s/kustomization.yaml").remove(0);
    let mut out = HashMap::new();
    for file in kustomization["resources"].as_sequence().unwrap() {
        for doc in documents(&format!("deploy/k8s/{}", file.as_str().unwrap())) {
            let key = (doc["kind"].as_str().unwrap().to_owned(), doc["metadata"]["name"].as_str().unwrap().to_owned());
            assert!(out.insert(key.clone(), doc).is_none(), "{key:?} defined twice");
        }
    }
    out
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn manifests_agree_with_the_servers_and_the_compose_file() {
    let resources = resources();
    let get = |kind: &str, name: &str| {
        resources.get(&(kind.to_owned(), name.to_owned())).unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let config = &get("ConfigMap", "licensing")["data"];
    let grace_ms: u64 = config["LICENSING_SHUTDOWN_GRACE_MS"].as_str().unwrap().parse().unwrap();
    let delay_ms: u64 = config["LICENSING_SHUTDOWN_READINESS_DELAY_MS"].as_str().unwrap().parse().unwrap();
    let metrics_port = port_of(config["LICENSING_METRICS_ADDR"].as_str().unwrap());
    let known: Vec<&str> = VARIABLES.iter().map(|(name, _)| *name).collect();
    for key in config.as_mapping().unwrap().keys() {
        assert!(known.contains(&key.as_str().unwrap()), "the ConfigMap sets {key:?}, which no server reads");
    }
    let compose = {
        let text = std::fs::read_to_string(path("docker-compose.yml")).unwrap();
        let mut value: Value = serde_yaml::from_str(&text).unwrap();
        value.apply_merge().unwrap();
        value
    };
    let dockerfile = std::fs::read_to_string(path("deploy/Dockerfile")).unwrap();
    let secret_notes = std::fs::read_to_string(path("deploy/k8s/README.md")).unwrap();

    for service in SERVICES {
        let name = format!("licensing-{service}");
        let deployment = get("Deployment", &name);
        let spec = &deployment["spec"];
        let selector = &spec["selector"]["matchLabels"];
        let labels = &spec["template"]["metadata"]["labels"];
        for (k, v) in selector.as_mapping().unwrap() {
            assert_eq!(&labels[k.as_str().unwrap()], v, "{name}: the selector selects its own pods");
        }
        assert!(spec["replicas"].as_u64().unwrap() >= 2, "{name}: more than one replica, so a PDB can hold");
        let pod = &spec["template"]["spec"];
        let grace_s = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(grace_s * 1000 > delay_ms + grace_ms, "{name}: Kubernetes waits longer than the server shuts down");
        assert!(dockerfile.contains(&format!("--uid {}", pod["securityContext"]["runAsUser"].as_u64().unwrap())));
        let container = &pod["containers"][0];
        let compose_service = &compose["services"][service];
        assert_eq!(container["args"], compose_service["command"], "{name}: the same binary as in compose");

        // Environment: only variables the servers read; the listen port is the container's port.
        let env: HashMap<&str, &Value> =
            container["env"].as_sequence().unwrap().iter().map(|e| (e["name"].as_str().unwrap(), e)).collect();
        for var in env.keys() {
            assert!(known.contains(var), "{name} sets {var}, which no server reads");
        }
        for var in ["LICENSING_DATABASE_URL", "LICENSING_HASH_KEY", "LICENSING_SIGNING_KEY"] {
            assert!(env.contains_key(var), "{name} needs {var}");
        }
        if service == "seat" {
            assert!(env.contains_key("LICENSING_REDIS_URL"), "the Seat service keeps leases in Redis");
        }
        for e in env.values() {
            if let Some(secret) = e.get("valueFrom").and_then(|v| v.get("secretKeyRef")) {
                assert_eq!(secret["name"].as_str(), Some("licensing"), "{name}");
                let key = secret["key"].as_str().unwrap();
                assert!(secret_notes.contains(&format!("--from-literal={key}=")), "deploy/k8s/README.md creates {key}");
            }
        }
        let grpc_port = port_of(env["LICENSING_LISTEN_ADDR"]["value"].as_str().unwrap());
        let compose_port = port_of(compose_service["environment"]["LICENSING_LISTEN_ADDR"].as_str().unwrap());
        assert_eq!(grpc_port, compose_port, "{name}: the port compose uses");
        let ports: HashMap<&str, u64> = container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap(), p["containerPort"].as_u64().unwrap()))
            .collect();
        assert_eq!(ports["grpc"], grpc_port, "{name}");
        assert_eq!(ports["metrics"], metrics_port, "{name}");
        // The Account service also serves the customer portal in a browser, on the port compose uses.
        let portal = env.get("LICENSING_PORTAL_ADDR").map(|e| port_of(e["value"].as_str().unwrap()));
        if let Some(portal) = portal {
            assert_eq!(service, "account", "{name}: only the Account service serves the portal");
            assert_eq!(ports["portal"], portal, "{name}");
            let compose_portal = port_of(compose_service["environment"]["LICENSING_PORTAL_ADDR"].as_str().unwrap());
            assert_eq!(portal, compose_portal, "{name}: the portal port compose uses");
        }

        // Probes ask the gRPC health service on the port served.
        for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
            assert_eq!(container[probe]["grpc"]["port"].as_u64(), Some(grpc_port), "{name} {probe}");
        }
        let ready = &container["readinessProbe"];
        let unready_ms = ready["periodSeconds"].as_u64().unwrap() * ready["failureThreshold"].as_u64().unwrap() * 1000;
        assert!(unready_ms <= delay_ms, "{name}: the readiness probe marks the pod unready within the readiness delay");
        let requests = &container["resources"]["requests"];
        assert!(requests["cpu"].is_string() && requests["memory"].is_string(), "{name} requests resources");
        assert!(container["resources"]["limits"]["memory"].is_string(), "{name} has a memory limit");
        // The image's data directory is writable (the root file system is read-only).
        let image_env = crate::image::image_env();
        let data_dir = image_env["LICENSING_DATA_DIR"].as_str();
        let mounts = container["volumeMounts"].as_sequence().unwrap();
        assert!(mounts.iter().any(|m| m["mountPath"].as_str() == Some(data_dir)), "{name} mounts {data_dir}");

        // The Service exposes both named ports and selects the pods; the PDB keeps one.
        let svc = get("Service", &name);
        for (k, v) in svc["spec"]["selector"].as_mapping().unwrap() {
            assert_eq!(&labels[k.as_str().unwrap()], v, "{name}: the Service selects the pods");
        }
        let targets: Vec<&str> =
            svc["spec"]["ports"].as_sequence().unwrap().iter().map(|p| p["targetPort"].as_str().unwrap()).collect();
        let expected: &[&str] = if portal.is_some() { &["grpc", "portal", "metrics"] } else { &["grpc", "metrics"] };
        assert_eq!(targets, expected, "{name}");
        assert_eq!(svc["metadata"]["annotations"]["prometheus.io/port"].as_str(), Some(&*metrics_port.to_string()));
        let pdb = get("PodDisruptionBudget", &name);
        assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector, "{name}: the PDB covers the pods");
        assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(1), "{name}");
    }
}

/// The Kubernetes API schema, checked by `kubernetes-validate` (PyPI): scripts/test.sh installs
/// it; without it this test says so and passes, unless `CI` is set.
#[test]
fn manifests_pass_the_kubernetes_schema() {
    let tool = std::env::var("KUBERNETES_VALIDATE").unwrap_or_else(|_| "kubernetes-validate".into());
    let kustomization = documents("deploy/k8s/kustomization.yaml").remove(0);
    let files: Vec<String> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|f| path(&format!("deploy/k8s/{}", f.as_str().unwrap())))
        .collect();
    let output = match std::process::Command::new(&tool).args(["--strict", "-k", "1.30.0"]).args(&files).output() {
        Ok(output) => output,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: {tool} not found ({e}); ./scripts/test.sh installs it");
            return;
        }
        Err(e) => panic!("{tool}: {e} (CI is set: the schema check must run)"),
    };
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{report}");
    // Every resource kustomize applies: 3 services x (Deployment, Service, PDB), the ConfigMap,
    // the migration Job, the Ingress, 2 autoscalers, the NetworkPolicy.
    assert_eq!(report.matches(" passed for resource ").count(), resources().len(), "{report}");
    assert_eq!(resources().len(), 15, "{report}");
}

/// Every pod passes the Pod Security Standard "restricted", runs this release's pinned image,
/// and leaves migrations to the Job; the autoscalers, the NetworkPolicy and the Ingress fit the
/// Deployments, and the Ingress routes what the compose gateway routes.
#[test]
fn pods_are_restricted_pinned_and_migrated_by_a_job_and_the_ingress_routes_like_the_gateway() {
    let resources = resources();
    let get = |kind: &str, name: &str| {
        resources.get(&(kind.to_owned(), name.to_owned())).unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let image = format!("licensing:{}", env!("CARGO_PKG_VERSION"));
    let mut pods = 0;
    for ((kind, name), doc) in &resources {
        if kind != "Deployment" && kind != "Job" {
            continue;
        }
        pods += 1;
        let pod = &doc["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false), "{kind} {name}");
        for host in ["hostNetwork", "hostPID", "hostIPC"] {
            assert!(pod[host].as_bool() != Some(true), "{kind} {name}: {host}");
        }
        let pod_security = &pod["securityContext"];
        assert_eq!(pod_security["runAsNonRoot"].as_bool(), Some(true), "{kind} {name}");
        assert!(pod_security["runAsUser"].as_u64().is_some_and(|u| u > 0), "{kind} {name}");
        assert_eq!(pod_security["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"), "{kind} {name}");
        for volume in pod["volumes"].as_sequence().into_iter().flatten() {
            let allowed =
                ["emptyDir", "configMap", "secret", "projected", "downwardAPI", "persistentVolumeClaim", "ephemeral"];
            assert!(allowed.iter().any(|t| volume.get(*t).is_some()), "{kind} {name}: volume {volume:?}");
        }
        let containers = pod["containers"]
            .as_sequence()
            .unwrap()
            .iter()
            .chain(pod["initContainers"].as_sequence().into_iter().flatten());
        for container in containers {
            let c = container["name"].as_str().unwrap();
            assert_eq!(
                container["image"].as_str(),
                Some(image.as_str()),
                "{kind} {name}/{c}: this release's pinned image"
            );
            let security = &container["securityContext"];
            assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false), "{kind} {name}/{c}");
            assert!(security["privileged"].as_bool() != Some(true), "{kind} {name}/{c}");
            assert_eq!(
                security["capabilities"]["drop"],
                serde_yaml::from_str::<Value>("[ALL]").unwrap(),
                "{kind} {name}/{c}"
            );
            assert!(security["capabilities"]["add"].is_null(), "{kind} {name}/{c}");
            assert_eq!(security["runAsNonRoot"].as_bool(), Some(true), "{kind} {name}/{c}");
            assert!(security["seccompProfile"].is_null() || security["seccompProfile"]["type"] == "RuntimeDefault");
        }
    }
    assert_eq!(pods, 4, "three Deployments and the migration Job");

    // Pods do not migrate; the Job does, and is named for this release (Jobs are immutable).
    assert_eq!(get("ConfigMap", "licensing")["data"]["LICENSING_MIGRATE"].as_str(), Some("off"));
    let job_name = format!("licensing-migrate-{}", env!("CARGO_PKG_VERSION").replace('.', "-"));
    let job = &get("Job", &job_name)["spec"]["template"]["spec"]["containers"][0];
    let env: HashMap<&str, &Value> =
        job["env"].as_sequence().unwrap().iter().map(|e| (e["name"].as_str().unwrap(), e)).collect();
    assert_eq!(env["LICENSING_MIGRATE"]["value"].as_str(), Some("only"));
    assert!(env.contains_key("LICENSING_DATABASE_URL"));
    let known: Vec<&str> = VARIABLES.iter().map(|(name, _)| *name).collect();
    assert!(env.keys().all(|k| known.contains(k)), "{env:?}");

    // Autoscalers for Seat and Activation, above the PodDisruptionBudget's floor.
    for service in ["seat", "activation"] {
        let name = format!("licensing-{service}");
        let hpa = &get("HorizontalPodAutoscaler", &name)["spec"];
        assert_eq!(hpa["scaleTargetRef"]["kind"].as_str(), Some("Deployment"));
        assert_eq!(hpa["scaleTargetRef"]["name"].as_str(), Some(name.as_str()));
        let min = hpa["minReplicas"].as_u64().unwrap();
        assert!(min > get("PodDisruptionBudget", &name)["spec"]["minAvailable"].as_u64().unwrap(), "{name}");
        assert!(hpa["maxReplicas"].as_u64().unwrap() > min, "{name}");
        let requests = &get("Deployment", &name)["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"];
        assert!(requests["cpu"].is_string(), "{name}: CPU utilization needs a CPU request");
    }

    // The NetworkPolicy selects every service's pods and opens only ports they name.
    let policy = &get("NetworkPolicy", "licensing")["spec"];
    for service in SERVICES {
        let pod = &get("Deployment", &format!("licensing-{service}"))["spec"]["template"];
        for (k, v) in policy["podSelector"]["matchLabels"].as_mapping().unwrap() {
            assert_eq!(&pod["metadata"]["labels"][k.as_str().unwrap()], v, "the NetworkPolicy covers {service}");
        }
    }
    let named_ports: Vec<&str> = SERVICES
        .iter()
        .flat_map(|s| {
            get("Deployment", &format!("licensing-{s}"))["spec"]["template"]["spec"]["containers"][0]["ports"]
                .as_sequence()
                .unwrap()
        })
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for rule in policy["ingress"].as_sequence().unwrap() {
        for port in rule["ports"].as_sequence().unwrap() {
            let port = port["port"].as_str().unwrap();
            assert!(named_ports.contains(&port), "the NetworkPolicy opens {port}, a port the pods name");
        }
    }

    // The Ingress routes each gRPC service to the Service of the process serving it, as the
    // compose gateway does (whose routes tests/compose.rs checks against reflection).
    let ingress = get("Ingress", "licensing-grpc");
    assert_eq!(
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"].as_str(),
        Some("GRPC")
    );
    let mut routes: Vec<(String, String)> = ingress["spec"]["rules"][0]["http"]["paths"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["pathType"].as_str(), Some("Prefix"));
            let backend = &p["backend"]["service"];
            assert_eq!(backend["port"]["name"].as_str(), Some("grpc"));
            let service = backend["name"].as_str().unwrap();
            get("Service", service);
            (p["path"].as_str().unwrap().to_owned(), service.trim_start_matches("licensing-").to_owned())
        })
        .collect();
    let mut gateway = crate::compose::gateway().routes;
    routes.sort();
    gateway.sort();
    assert_eq!(routes, gateway, "the Ingress (left) routes what deploy/gateway/nginx.conf (right) routes");
}
