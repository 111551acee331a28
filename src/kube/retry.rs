//! The one retry of every Kubernetes API call: a request that finds no connection, gets no
//! answer within `attempt`, or is answered 429, 500, 502, 503 or 504 is sent again after a
//! growing pause (a 429's `Retry-After` honoured), until `budget` is spent; then the call fails
//! with an error that names it (`GET /api/v1/namespaces/kube-system/configmaps/kubeadm-config`)
//! and the last thing that went wrong. Any other answer is the caller's to read.
//!
//! A create whose answer was lost is sent again and then finds its object (409 AlreadyExists):
//! callers that create treat that as theirs (see `cluster::tokens`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use kube::client::Body;
use tower::{BoxError, Layer, Service, ServiceExt as _};

const FIRST_PAUSE: Duration = Duration::from_millis(200);
const LONGEST_PAUSE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// How long one call may take, its retries included.
    pub budget: Duration,
    /// How long one attempt waits for the answer's head.
    pub attempt: Duration,
}

impl<S> Layer<S> for Retry {
    type Service = Retrying<S>;
    fn layer(&self, inner: S) -> Retrying<S> {
        Retrying {
            inner,
            policy: *self,
        }
    }
}

#[derive(Clone)]
pub struct Retrying<S> {
    inner: S,
    policy: Retry,
}

type Answer<B> = Result<Response<B>, BoxError>;

impl<S, B> Service<Request<Body>> for Retrying<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Answer<B>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The ready service answers this request; a clone waits for the next one.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(self.policy.send(inner, request))
    }
}

/// How an attempt failed in a way worth repeating.
enum Failed<B> {
    Answered(Response<B>),
    Error(BoxError),
    NoAnswer,
}

impl Retry {
    async fn send<S, B>(self, mut inner: S, request: Request<Body>) -> Answer<B>
    where
        S: Service<Request<Body>, Response = Response<B>> + Clone + Send,
        S::Error: Into<BoxError>,
        S::Future: Send,
    {
        let call = format!("{} {}", request.method(), request.uri().path());
        let start = Instant::now();
        let mut pause = FIRST_PAUSE;
        for attempt in 1.. {
            let Some(copy) = copy(&request) else {
                // A streamed body cannot be sent twice.
                return inner.oneshot(request).await.map_err(Into::into);
            };
            let left = self.budget.saturating_sub(start.elapsed());
            let failed = match tokio::time::timeout(
                self.attempt.min(left),
                inner.ready().await.map_err(Into::into)?.call(copy),
            )
            .await
            {
                Ok(Ok(answer)) if !retryable(answer.status()) => return Ok(answer),
                Ok(Ok(answer)) => Failed::Answered(answer),
                Ok(Err(e)) => Failed::Error(e.into()),
                Err(_) => Failed::NoAnswer,
            };
            let wait = match &failed {
                Failed::Answered(answer) => retry_after(answer).unwrap_or(pause),
                _ => pause,
            };
            let why = match failed {
                Failed::Answered(answer) => format!("the API server answered {}", answer.status()),
                Failed::Error(e) => error_chain(&*e),
                Failed::NoAnswer => format!("no answer within {:?}", self.attempt.min(left)),
            };
            if start.elapsed() + wait >= self.budget {
                return Err(format!(
                    "{call}: gave up after {attempt} attempts in {:.1}s: {why}",
                    start.elapsed().as_secs_f64()
                )
                .into());
            }
            tracing::info!("{call}: {why}; trying again in {wait:?}");
            tokio::time::sleep(wait).await;
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
        unreachable!("the loop returns")
    }
}

fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

/// A 429's or 503's `Retry-After: <seconds>`, at most the longest pause.
fn retry_after<B>(answer: &Response<B>) -> Option<Duration> {
    let seconds: u64 = answer
        .headers()
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(LONGEST_PAUSE))
}

/// An error and its causes on one line (hyper's "client error (Connect)" says little alone).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn copy(request: &Request<Body>) -> Option<Request<Body>> {
    let mut copy = Request::new(request.body().try_clone()?);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    Some(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_after_is_honoured_up_to_the_longest_pause_and_only_overload_is_retried() {
        let answer = |after: &str| {
            Response::builder()
                .status(429)
                .header("Retry-After", after)
                .body(())
                .unwrap()
        };
        assert_eq!(retry_after(&answer("2")), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(&answer("120")), Some(LONGEST_PAUSE));
        assert_eq!(retry_after(&answer("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert!(retryable(StatusCode::TOO_MANY_REQUESTS) && retryable(StatusCode::BAD_GATEWAY));
        for status in [400, 401, 403, 404, 409, 422] {
            assert!(
                !retryable(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
    }
}
