//! What every server offers: health, reflection (v1 and v1alpha), and its shutdown: NOT_SERVING
//! first, a readiness delay, then a drain that ends every open stream.

use crate::common::*;
use futures::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

async fn health_of(app: &TestApp, service: &str) -> Result<i32, tonic::Status> {
    let mut health = HealthClient::new(app.channel().await);
    health.check(HealthCheckRequest { service: service.into() }).await.map(|r| r.into_inner().status)
}

#[tokio::test]
async fn health_reports_each_service_serving() {
    let app = spawn_app(Backend::Sqlite).await;
    for service in [
        "",
        "licensing.account.v1.AdminService",
        "licensing.activation.v1.ActivationService",
        "licensing.seat.v1.SeatService",
    ] {
        assert_eq!(health_of(&app, service).await.unwrap(), ServingStatus::Serving as i32, "{service}");
    }
    let unknown = health_of(&app, "no.such.Service").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn shutdown_turns_health_not_serving_first_and_keeps_serving_through_the_readiness_delay() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut env = test_env(Backend::Sqlite, data_dir.path()).await;
    env.insert("LICENSING_SHUTDOWN_READINESS_DELAY_MS".into(), "5000".into());
    let app = spawn_with_env(Backend::Sqlite, data_dir, env).await;
    let addr = app.addr;
    let channel = app.channel().await;
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest { service: "licensing.seat.v1.SeatService".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, ServingStatus::Serving as i32);
    let stopping = tokio::spawn(app.stop());

    let update = tokio::time::timeout(DOES_NOT_HANG, watch.message()).await.expect("a health update");
    assert_eq!(update.unwrap().expect("NOT_SERVING, not the end").status, ServingStatus::NotServing as i32);
    // Heard while the listener still accepts: a new connection's calls are served, and the
    // open one's too, until the readiness delay ends.
    let fresh = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("still accepting after NOT_SERVING");
    let whole = HealthClient::new(fresh.clone()).check(HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(whole.into_inner().status, ServingStatus::NotServing as i32);
    use licensing_proto::activation::v1 as act;
    let key = act::activation_service_client::ActivationServiceClient::new(fresh)
        .get_verifying_key(act::GetVerifyingKeyRequest {})
        .await
        .expect("new calls are served during the readiness delay");
    assert!(!key.into_inner().public_key.is_empty());
    let products = licensing_proto::account::v1::admin_service_client::AdminServiceClient::new(channel)
        .list_products(admin_req(licensing_proto::account::v1::ListProductsRequest::default()))
        .await;
    assert!(products.is_ok(), "the open connection serves too: {products:?}");

    // Then the drain: the watch ends, the server stops, nothing is accepted any more.
    let end = tokio::time::timeout(DOES_NOT_HANG, watch.message()).await.expect("the watch ends at the drain");
    assert!(matches!(end, Ok(None)), "{end:?}");
    tokio::time::timeout(DOES_NOT_HANG, stopping).await.expect("stops after the delay").unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer accepting");
}

#[tokio::test]
async fn every_open_stream_ends_when_the_drain_starts_and_none_holds_the_stop() {
    for (backend, leases) in store_backends().await {
        // A grace long enough that a stream held open through it would fail the guards below.
        let app = spawn_app_on(backend, leases, &[("LICENSING_SHUTDOWN_GRACE_MS", "60000")]).await;
        let channel = app.channel().await;
        let (node_locked, floating) = process::AdminOn(channel.clone()).licenses().await;
        let streams = OpenStreams::open(channel, &node_locked, &floating).await;
        let stopping = tokio::spawn(app.stop());
        streams.assert_ended_by_the_drain(false, &format!("{backend:?} with {leases:?} leases")).await;
        // The grace is for unary calls in flight; with every stream ended the stop is prompt.
        tokio::time::timeout(DOES_NOT_HANG, stopping)
            .await
            .expect("no open stream holds the process through the grace period")
            .unwrap();
    }
}

mod reflection_v1 {
    pub use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    pub use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    pub use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    pub use tonic_reflection::pb::v1::ServerReflectionRequest;
}

mod reflection_v1alpha {
    pub use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    pub use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    pub use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    pub use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
}

macro_rules! reflect {
    ($module:ident, $channel:expr, $request:expr) => {{
        use $module::*;
        let mut client = ServerReflectionClient::new($channel);
        let request = ServerReflectionRequest { host: String::new(), message_request: Some($request) };
        let mut stream =
            client.server_reflection_info(futures::stream::iter(vec![request])).await.unwrap().into_inner();
        stream.next().await.unwrap().unwrap().message_response.unwrap()
    }};
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_and_describe() {
    let app = spawn_app(Backend::Sqlite).await;
    let expected = ["licensing.account.v1.AdminService", "grpc.health.v1.Health"];

    let listed = match reflect!(
        reflection_v1,
        app.channel().await,
        reflection_v1::MessageRequest::ListServices(String::new())
    ) {
        reflection_v1::MessageResponse::ListServicesResponse(r) => {
            r.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }
        other => panic!("unexpected {other:?}"),
    };
    for name in expected {
        assert!(listed.iter().any(|n| n == name), "v1 lists {name}: {listed:?}");
    }
    let listed = match reflect!(
        reflection_v1alpha,
        app.channel().await,
        reflection_v1alpha::MessageRequest::ListServices(String::new())
    ) {
        reflection_v1alpha::MessageResponse::ListServicesResponse(r) => {
            r.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }
        other => panic!("unexpected {other:?}"),
    };
    for name in expected {
        assert!(listed.iter().any(|n| n == name), "v1alpha lists {name}: {listed:?}");
    }
    // `grpcurl describe` asks for the file containing a symbol.
    match reflect!(
        reflection_v1,
        app.channel().await,
        reflection_v1::MessageRequest::FileContainingSymbol("licensing.account.v1.AdminService".into())
    ) {
        reflection_v1::MessageResponse::FileDescriptorResponse(r) => {
            assert!(!r.file_descriptor_proto.is_empty())
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn reflection_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = test_env(Backend::Sqlite, dir.path()).await;
    env.insert("LICENSING_REFLECTION".into(), "false".into());
    let app = spawn_with_env(Backend::Sqlite, dir, env).await;
    let mut client = reflection_v1::ServerReflectionClient::new(app.channel().await);
    let request = reflection_v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(reflection_v1::MessageRequest::ListServices(String::new())),
    };
    let err = client.server_reflection_info(futures::stream::iter(vec![request])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}

#[test]
fn every_guarantee_in_the_readme_names_a_test_that_exists() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let section: String = readme
        .lines()
        .skip_while(|l| *l != "## Guarantees")
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with('|'))
        .collect();
    let mut named = 0;
    for cited in section.split('`').skip(1).step_by(2).filter(|c| c.contains("::")) {
        let (file, test) = cited.split_once("::").unwrap();
        let source = std::fs::read_to_string(format!("{root}/tests/{file}.rs"))
            .unwrap_or_else(|_| panic!("Guarantees cites tests/{file}.rs, which does not exist"));
        assert!(
            test_modules().contains(&file.to_owned()),
            "Guarantees cites {file}, which tests/main.rs does not build"
        );
        if test != "*" {
            assert!(source.contains(&format!("fn {test}(")), "Guarantees cites {cited}, which does not exist");
        }
        named += 1;
    }
    assert!(named >= 10, "the Guarantees section names its tests ({named} found)");
}

/// The modules `tests/main.rs` declares.
fn test_modules() -> Vec<String> {
    let main = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/main.rs")).unwrap();
    main.lines().filter_map(|l| l.strip_prefix("mod ")?.strip_suffix(';')).map(str::to_owned).collect()
}

#[test]
fn every_test_file_is_a_module_of_the_test_binary() {
    // Cargo builds only tests/main.rs (autotests = false): a file left out of it would never run.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests");
    let modules = test_modules();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(module) = name.strip_suffix(".rs").filter(|m| *m != "main") {
            assert!(modules.contains(&module.to_owned()), "tests/{name} is not declared in tests/main.rs");
        }
    }
}

#[tokio::test]
async fn reflection_lists_what_the_readme_shows() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let shown: Vec<String> = readme
        .lines()
        .skip_while(|l| !l.contains("grpcurl -plaintext localhost:50051 list"))
        .skip(1)
        .take_while(|l| l.starts_with("# "))
        .map(|l| l.trim_start_matches("# ").to_owned())
        .collect();
    let app = spawn_app(Backend::Sqlite).await;
    let mut listed = match reflect!(
        reflection_v1,
        app.channel().await,
        reflection_v1::MessageRequest::ListServices(String::new())
    ) {
        reflection_v1::MessageResponse::ListServicesResponse(r) => {
            r.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }
        other => panic!("unexpected {other:?}"),
    };
    listed.sort();
    assert_eq!(listed, shown, "the README's `grpcurl list` output matches the server");
}
