//! The exporter against a tonic `ProfilesService` server on loopback that
//! fails on demand. (The end-to-end tests use a receiver built from the
//! official Python stubs instead.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use smolder_profiles_proto::otlp::collector::profiles::v1development::profiles_service_server::{
    ProfilesService, ProfilesServiceServer,
};
use smolder_profiles_proto::otlp::collector::profiles::v1development::{
    ExportProfilesPartialSuccess, ExportProfilesServiceResponse,
};
use smolder_profiles_proto::{read_folded, ProfileView};
use tonic::{Code, Request, Response};
use tonic_types::{ErrorDetails, StatusExt as _};

use super::*;

#[derive(Clone, Copy)]
enum Failure {
    None,
    Unavailable,
    InvalidArgument,
    ExhaustedFor(Duration),
}

#[derive(Clone)]
struct Received {
    request: ExportProfilesServiceRequest,
    metadata: MetadataMap,
    at: StdInstant,
}

struct Receiver {
    fail_first: usize,
    failure: Failure,
    partial: bool,
    calls: AtomicUsize,
    received: Mutex<Vec<Received>>,
}

struct Service(Arc<Receiver>);

#[tonic::async_trait]
impl ProfilesService for Service {
    async fn export(
        &self,
        request: Request<ExportProfilesServiceRequest>,
    ) -> Result<Response<ExportProfilesServiceResponse>, Status> {
        let this = &self.0;
        let call = this.calls.fetch_add(1, Ordering::SeqCst);
        this.received.lock().unwrap().push(Received {
            metadata: request.metadata().clone(),
            request: request.into_inner(),
            at: StdInstant::now(),
        });
        if call < this.fail_first {
            return Err(match this.failure {
                Failure::None => unreachable!("fail_first needs a failure"),
                Failure::Unavailable => Status::unavailable("warming up"),
                Failure::InvalidArgument => Status::invalid_argument("no thanks"),
                Failure::ExhaustedFor(delay) => Status::with_error_details(
                    Code::ResourceExhausted,
                    "slow down",
                    ErrorDetails::with_retry_info(Some(delay)),
                ),
            });
        }
        Ok(Response::new(ExportProfilesServiceResponse {
            partial_success: this.partial.then(|| ExportProfilesPartialSuccess {
                rejected_profiles: 1,
                error_message: "one profile was too old".into(),
            }),
        }))
    }
}

async fn serve(fail_first: usize, failure: Failure, partial: bool) -> (String, Arc<Receiver>) {
    let receiver = Arc::new(Receiver {
        fail_first,
        failure,
        partial,
        calls: AtomicUsize::new(0),
        received: Mutex::new(Vec::new()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = ProfilesServiceServer::new(Service(Arc::clone(&receiver)))
        .accept_compressed(CompressionEncoding::Gzip);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    (format!("http://{addr}"), receiver)
}

fn config(endpoint: String) -> ExporterConfig {
    ExporterConfig {
        endpoint,
        timeout: Duration::from_secs(2),
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            multiplier: 2.0,
        },
        ..ExporterConfig::default()
    }
}

fn profile(stack: &str) -> ProfilesData {
    read_folded(&format!("{stack} 3\n")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_gzip_and_resource_attributes_arrive() {
    let (endpoint, receiver) = serve(0, Failure::None, true).await;
    let mut config = config(endpoint);
    config.set_header("Authorization", "Bearer token-1");
    config.resource.push("service.name", "tests");
    config.resource.push("host.name", "node-a");
    let exporter = Exporter::start(config).unwrap();
    exporter.export(profile("main;work"));
    let stats = exporter.shutdown(Duration::from_secs(5)).await;
    assert_eq!(stats.exported_batches, 1);
    assert_eq!(stats.rejected_profiles, 1, "partial success is counted");
    let received = receiver.received.lock().unwrap();
    assert_eq!(received.len(), 1);
    let got = &received[0];
    assert_eq!(got.metadata.get("authorization").unwrap(), "Bearer token-1");
    assert_eq!(got.metadata.get("grpc-encoding").unwrap(), "gzip");
    let data = smolder_profiles_proto::from_export_request(got.request.clone());
    smolder_profiles_proto::validate(&data).unwrap();
    let attrs = &data.resource_profiles[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes;
    assert!(attrs.iter().any(|kv| kv.key == "host.name"));
    assert!(attrs.iter().any(|kv| kv.key == "service.name"));
    let view = ProfileView::new(&data);
    assert_eq!(view.profiles().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_is_retried_until_accepted_in_order() {
    let (endpoint, receiver) = serve(3, Failure::Unavailable, false).await;
    let exporter = Exporter::start(config(endpoint)).unwrap();
    exporter.export(profile("first"));
    exporter.export(profile("second"));
    let stats = exporter.shutdown(Duration::from_secs(5)).await;
    assert_eq!(stats.exported_batches, 2);
    assert_eq!(stats.retries, 3);
    assert_eq!(stats.failed_batches, 0);
    assert_eq!(stats.dropped_batches, 0);
    let received = receiver.received.lock().unwrap();
    let names: Vec<String> = received
        .iter()
        .map(|r| {
            let data = smolder_profiles_proto::from_export_request(r.request.clone());
            smolder_profiles_proto::write_folded(&data, &Default::default())
        })
        .collect();
    assert_eq!(
        names,
        [
            "first 3\n",
            "first 3\n",
            "first 3\n",
            "first 3\n",
            "second 3\n"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_are_not_retried() {
    let (endpoint, receiver) = serve(1, Failure::InvalidArgument, false).await;
    let exporter = Exporter::start(config(endpoint)).unwrap();
    exporter.export(profile("bad"));
    exporter.export(profile("good"));
    let stats = exporter.shutdown(Duration::from_secs(5)).await;
    assert_eq!((stats.failed_batches, stats.exported_batches), (1, 1));
    assert_eq!(stats.retries, 0);
    assert_eq!(receiver.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_info_delay_is_honoured() {
    let delay = Duration::from_millis(400);
    let (endpoint, receiver) = serve(1, Failure::ExhaustedFor(delay), false).await;
    let exporter = Exporter::start(config(endpoint)).unwrap();
    exporter.export(profile("slow"));
    // Shut down while the exporter waits: the server's delay still holds.
    while receiver.calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = exporter.shutdown(Duration::from_secs(5)).await;
    assert_eq!((stats.exported_batches, stats.retries), (1, 1));
    let received = receiver.received.lock().unwrap();
    let waited = received[1].at - received[0].at;
    // The configured backoff is at most 200 ms: only RetryInfo explains 400.
    assert!(waited >= delay, "retried after {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_bounded_when_nobody_listens() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let one = to_export_request(profile("a;b;c")).encoded_len();
    let mut config = config(format!("http://127.0.0.1:{port}"));
    config.queue_bytes = one * 3 + one / 2;
    let exporter = Exporter::start(config).unwrap();
    for _ in 0..10 {
        exporter.export(profile("a;b;c"));
        let stats = exporter.stats();
        assert!(stats.queue_bytes <= stats.queue_limit_bytes);
    }
    let stats = exporter.stats();
    assert_eq!(stats.dropped_batches, 7);
    assert_eq!(stats.dropped_bytes, 7 * one as u64);
    let stats = exporter.shutdown(Duration::from_millis(300)).await;
    assert_eq!(stats.dropped_batches, 10, "unsent at the deadline counts");
    assert_eq!(stats.exported_batches, 0);
    assert!(stats.failed_attempts >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_reported() {
    let bad = |config: ExporterConfig| Exporter::start(config).err().unwrap().to_string();
    assert!(bad(config("localhost:4317".into())).contains("http://"));
    let mut tls = config("http://localhost:4317".into());
    tls.tls.ca_file = Some("/nonexistent/ca.pem".into());
    assert!(bad(tls.clone()).contains("use https://"));
    tls.endpoint = "https://localhost:4317".into();
    assert!(bad(tls).contains("/nonexistent/ca.pem"));
    let mut header = config("http://localhost:4317".into());
    header.set_header("bad key", "v");
    assert!(bad(header).contains("bad key"));
}
