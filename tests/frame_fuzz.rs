//! Random bytes as gRPC frames: every method of every service, with bodies that are noise,
//! well-framed noise, a frame header that lies about its length or claims compression, a length
//! past the message size limit, or several frames at once. No answer may be INTERNAL or UNKNOWN,
//! and the server keeps serving.

use crate::common::*;
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use licensing_proto::common::v1::LicenseKind;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;
use tonic::transport::Channel;
use tonic::Code;
use tower::ServiceExt;

/// `/package.Service/Method` of every RPC in the API.
fn method_paths() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(licensing_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut paths = vec![];
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                paths.push(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
            }
        }
    }
    assert!(paths.len() > 40, "found only {} methods", paths.len());
    paths
}

fn frame(flag: u8, claimed_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u8(flag);
    b.put_u32(claimed_len);
    b.put_slice(payload);
    b.to_vec()
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let noise = proptest::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        noise.clone(),
        noise.clone().prop_map(|p| frame(0, p.len() as u32, &p)),
        noise.clone().prop_map(|p| frame(1, p.len() as u32, &p)),
        (any::<u8>(), noise.clone()).prop_map(|(flag, p)| frame(flag, p.len() as u32, &p)),
        (any::<u32>(), noise.clone()).prop_map(|(len, p)| frame(0, len, &p)),
        noise.clone().prop_map(|p| frame(0, 64 * 1024 * 1024, &p)),
        proptest::collection::vec(noise, 2..5)
            .prop_map(|ps| ps.iter().flat_map(|p| frame(0, p.len() as u32, p)).collect()),
        // A field number and wire type that exist, with a length that runs past the end.
        Just(frame(0, 3, &[0x0a, 0xff, 0x01])),
    ]
}

/// The gRPC status of one raw POST: from the headers (trailers-only) or from the trailers.
async fn post(channel: &Channel, path: &str, body: Vec<u8>) -> Code {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Full::new(Bytes::from(body))))
        .unwrap();
    let response = channel.clone().oneshot(request).await.expect("the server answers at the HTTP/2 level");
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return status.code();
    }
    let collected = response.into_body().collect().await;
    match collected {
        Ok(c) => c.trailers().and_then(tonic::Status::from_header_map).map_or(Code::Unknown, |s| s.code()),
        Err(e) => panic!("the response body broke off: {e}"),
    }
}

#[test]
fn random_frames_never_get_internal_and_the_server_keeps_serving() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let paths = method_paths();
    let (app, channel) = rt.block_on(async {
        let app = spawn_app(Backend::Sqlite).await;
        let f = fixture(&app).await;
        issue_license(&app, &f, LicenseKind::Concurrent, 3, |_| {}).await;
        let channel = app.channel().await;
        (app, channel)
    });
    let cases = std::env::var("FRAME_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    runner
        .run(&(0..paths.len(), body()), |(method, body)| {
            let path = &paths[method];
            let shown = body.iter().take(16).map(|b| format!("{b:02x}")).collect::<String>();
            let code = rt.block_on(post(&channel, path, body.clone()));
            prop_assert!(
                !matches!(code, Code::Internal | Code::Unknown),
                "{path} answered {code:?} for {} bytes starting {shown}",
                body.len()
            );
            Ok(())
        })
        .unwrap();
    rt.block_on(async {
        use tonic_health::pb::health_client::HealthClient;
        let status = HealthClient::new(app.channel().await)
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .unwrap();
        assert_eq!(status.into_inner().status, 1, "still SERVING");
    });
}
