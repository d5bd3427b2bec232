//! Bearer-token auth: every `optimem.v1.Memory` call needs the token; health and reflection stay open.

mod common;

use common::server::*;

use optimem::memory::Limits;
use optimem::service::pb;
use optimem::service::{AuthToken, ServerConfig};
use tonic::{Code, Request};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_required_when_configured() {
    let f = fixture(16);
    let config = ServerConfig {
        auth_token: AuthToken::new("s3cret"),
        ..ServerConfig::default()
    };
    let server = start(&f, Limits::default(), config).await;
    let mut c = server.client().await;
    let with = |token: Option<&str>| {
        let mut req = Request::new(pb::StatsRequest { scope: None });
        if let Some(t) = token {
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {t}").parse().expect("ascii"),
            );
        }
        req
    };
    for bad in [None, Some("s3cre"), Some("s3cret!"), Some("")] {
        assert_eq!(code(c.stats(with(bad)).await), Code::Unauthenticated);
    }
    c.stats(with(Some("s3cret")))
        .await
        .expect("the right token passes");
    // Health stays open for probes.
    let mut health = server.health().await;
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health without a token");
    // So does reflection: grpcurl can list and describe the API without the .proto.
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(server.channel().await)
        .server_reflection_info(tokio_stream::iter([list]))
        .await
        .expect("reflection without a token")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(services)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<&str> = services.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"optimem.v1.Memory"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    server.stop().await;
}
