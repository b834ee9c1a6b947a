//! One tower layer for both ends of a tonic connection.
//!
//! - Client ([`GrpcLayer::client`], around a `Channel`): a `grpc.client` span per call
//!   whose trace context is injected into the request's headers (`traceparent`).
//! - Server ([`GrpcLayer::server`], `Server::builder().layer(…)`): a `grpc.server` span
//!   per call, the child of the caller's span named in `traceparent`; the handler runs
//!   inside it, so spans it opens (down to libvirt calls) join the caller's trace.
//!
//! Only calls that belong to a trace get a span: a client call made inside some span
//! (a REST request, an operation), a server call whose caller sent a valid
//! `traceparent`. Background loops (heartbeats, reconciliation) are not traced, so a
//! trace backend sees requests, not a stream of polls.
//!
//! Either way, when the call ends the [`CallObserver`] learns its method, gRPC code
//! and duration. The code is read where gRPC puts it: the response headers (a
//! "trailers-only" answer, e.g. an error before any message) or the trailers after the
//! last message; a failed transport is `UNAVAILABLE`, and a call dropped before its end
//! (deadline, client gone) is `CANCELLED`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use opentelemetry::trace::TraceContextExt as _;
use tonic::Code;
use tracing::Instrument as _;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::propagation;

/// Told about every call that ended.
pub trait CallObserver: Send + Sync + 'static {
    /// `method` is the RPC's name (`CreateSandbox`), or `unknown` for a path outside
    /// the layer's service.
    fn finished(&self, method: &str, code: Code, elapsed: Duration);
}

/// Which end of the connection the layer is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// The layer; see the module docs.
#[derive(Clone)]
pub struct GrpcLayer {
    side: Side,
    /// The gRPC service's full name (`fluid.agent.v1.HostAgent`).
    service: &'static str,
    observer: Arc<dyn CallObserver>,
}

impl std::fmt::Debug for GrpcLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcLayer")
            .field("side", &self.side)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl GrpcLayer {
    /// For a client of `service`.
    pub fn client(service: &'static str, observer: Arc<dyn CallObserver>) -> Self {
        Self {
            side: Side::Client,
            service,
            observer,
        }
    }

    /// For a server of `service`.
    pub fn server(service: &'static str, observer: Arc<dyn CallObserver>) -> Self {
        Self {
            side: Side::Server,
            service,
            observer,
        }
    }
}

impl<S> tower::Layer<S> for GrpcLayer {
    type Service = GrpcService<S>;

    fn layer(&self, inner: S) -> GrpcService<S> {
        GrpcService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`GrpcLayer`] makes.
#[derive(Debug, Clone)]
pub struct GrpcService<S> {
    inner: S,
    layer: GrpcLayer,
}

/// The RPC name in a request path `/<service>/<Method>`; `unknown` for any other path
/// (so a metric label never takes an arbitrary value).
pub fn method_name<'a>(service: &str, path: &'a str) -> &'a str {
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(service))
        .and_then(|p| p.strip_prefix('/'))
        .filter(|m| {
            !m.is_empty()
                && m.len() <= 64
                && m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .unwrap_or("unknown")
}

/// The `grpc-status` in a header map (response headers or trailers).
pub fn code_of(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

/// One call in flight: reports itself once, when it ends or is dropped.
struct Call {
    observer: Arc<dyn CallObserver>,
    method: Arc<str>,
    started: Instant,
    span: Span,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.span.record("rpc.grpc.status_code", code as i32);
        if code != Code::Ok {
            self.span.record("otel.status_code", "ERROR");
        }
        self.observer
            .finished(&self.method, code, self.started.elapsed());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

fn call_span(side: Side, service: &str, method: &str) -> Span {
    let name = format!("{service}/{method}");
    match side {
        Side::Client => tracing::info_span!(
            "grpc.client",
            otel.name = %name,
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = Empty,
            otel.status_code = Empty,
        ),
        Side::Server => tracing::info_span!(
            "grpc.server",
            otel.name = %name,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = Empty,
            otel.status_code = Empty,
        ),
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let method: Arc<str> = Arc::from(method_name(self.layer.service, req.uri().path()));
        let span = match self.layer.side {
            Side::Client if Span::current().is_none() => Span::none(),
            Side::Client => {
                let span = call_span(Side::Client, self.layer.service, &method);
                propagation::inject(&span, req.headers_mut());
                span
            }
            Side::Server => {
                let parent = propagation::extract(req.headers());
                if parent.span().span_context().is_valid() {
                    let span = call_span(Side::Server, self.layer.service, &method);
                    if let Err(e) = span.set_parent(parent) {
                        tracing::debug!(error = %e, "could not continue the caller's trace");
                    }
                    span
                } else {
                    Span::none()
                }
            }
        };
        let mut call = Call {
            observer: self.layer.observer.clone(),
            method,
            started: Instant::now(),
            span: span.clone(),
            done: false,
        };
        let fut = span.in_scope(|| self.inner.call(req));
        Box::pin(
            async move {
                match fut.await {
                    Ok(resp) => {
                        if let Some(code) = code_of(resp.headers()) {
                            call.finish(code);
                        }
                        let (parts, inner) = resp.into_parts();
                        Ok(http::Response::from_parts(
                            parts,
                            ObservedBody {
                                inner,
                                call: Some(call),
                            },
                        ))
                    }
                    Err(e) => {
                        call.finish(Code::Unavailable);
                        Err(e)
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// A response body that reports its call's gRPC code from the trailers.
pub struct ObservedBody<B> {
    inner: B,
    call: Option<Call>,
}

impl<B> ObservedBody<B> {
    fn finish(&mut self, code: Code) {
        if let Some(mut c) = self.call.take() {
            c.finish(code);
        }
    }
}

impl<B> Body for ObservedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.finish(code_of(trailers).unwrap_or(Code::Unknown));
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(Code::Unknown),
            // Ended without trailers: a broken stream (a trailers-only answer was
            // counted from its headers already).
            Poll::Ready(None) => this.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Seen(Mutex<Vec<(String, Code)>>);

    impl CallObserver for Seen {
        fn finished(&self, method: &str, code: Code, _: Duration) {
            self.0.lock().expect("lock").push((method.to_owned(), code));
        }
    }

    #[test]
    fn method_names_are_bounded() {
        let s = "fluid.agent.v1.HostAgent";
        assert_eq!(
            method_name(s, "/fluid.agent.v1.HostAgent/CreateSandbox"),
            "CreateSandbox"
        );
        for other in [
            "/",
            "/fluid.agent.v1.HostAgent/",
            "/fluid.agent.v1.HostAgentX/Create",
            "/other.Service/CreateSandbox",
            "/fluid.agent.v1.HostAgent/a/b",
            "/fluid.agent.v1.HostAgent/Create%20x",
        ] {
            assert_eq!(method_name(s, other), "unknown", "{other}");
        }
    }

    /// A server that answers with `headers` and then `trailers`.
    #[derive(Clone)]
    struct Answer {
        status_header: Option<&'static str>,
        trailer: Option<&'static str>,
    }

    impl tower::Service<http::Request<()>> for Answer {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let mut resp = http::Response::builder();
            if let Some(s) = self.status_header {
                resp = resp.header("grpc-status", s);
            }
            let body = match self.trailer {
                Some(t) => {
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static(t));
                    tonic::body::Body::new(Trailers(Some(trailers)))
                }
                None => tonic::body::Body::empty(),
            };
            std::future::ready(Ok(resp.body(body).expect("response")))
        }
    }

    /// A body of one trailers frame.
    struct Trailers(Option<http::HeaderMap>);

    impl Body for Trailers {
        type Data = Bytes;
        type Error = tonic::Status;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
            Poll::Ready(self.0.take().map(|t| Ok(Frame::trailers(t))))
        }
    }

    async fn drain<B: Body<Data = Bytes> + Unpin>(mut b: B) {
        while std::future::poll_fn(|cx| Pin::new(&mut b).poll_frame(cx))
            .await
            .is_some()
        {}
    }

    #[tokio::test]
    async fn codes_come_from_headers_trailers_or_a_drop() {
        use tower::{Layer as _, Service as _};
        let seen = Arc::new(Seen::default());
        let layer = GrpcLayer::server("svc.S", seen.clone());
        let req = |m: &str| {
            http::Request::builder()
                .uri(format!("/svc.S/{m}"))
                .body(())
                .expect("req")
        };
        // An error before any message: the code is in the headers.
        let mut svc = layer.layer(Answer {
            status_header: Some("5"),
            trailer: None,
        });
        let resp = svc.call(req("Get")).await.expect("resp");
        drain(resp.into_body()).await;
        // A normal answer: OK in the trailers.
        let mut svc = layer.layer(Answer {
            status_header: None,
            trailer: Some("0"),
        });
        let resp = svc.call(req("Create")).await.expect("resp");
        drain(resp.into_body()).await;
        // A stream whose reader left before its end.
        let resp = svc.call(req("Exec")).await.expect("resp");
        drop(resp);
        // A call abandoned before its answer (a deadline).
        drop(svc.call(req("Slow")));
        assert_eq!(
            *seen.0.lock().expect("lock"),
            [
                ("Get".to_owned(), Code::NotFound),
                ("Create".to_owned(), Code::Ok),
                ("Exec".to_owned(), Code::Cancelled),
                ("Slow".to_owned(), Code::Cancelled),
            ]
        );
    }
}
