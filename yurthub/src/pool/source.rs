//! The watch source of the leader-hub ConfigMap: a list (field selector on
//! the name) then a watch resuming from its resourceVersion, re-listing on
//! 410, through the hub's own loopback proxy (hub identity, the proxy's
//! balancing). One watch per hub, never a poll. Kept behind
//! [`watch_leader_configmap`] so a shared informer can replace it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Error;
use super::leaders::{LeaderConfig, NAMESPACE};
use crate::codec::{EventType, Format, WatchDecoder};

type Plain = Client<HttpConnector, Empty<Bytes>>;

/// Keeps `tx` at what `kube-system/<name>` says (the default when it does
/// not exist) until `shutdown`. `synced` is set true after the first list.
pub async fn watch_leader_configmap(
    proxy: SocketAddr,
    name: String,
    tx: watch::Sender<LeaderConfig>,
    synced: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let client: Plain = Client::builder(TokioExecutor::new()).build_http();
    let base = format!("http://{proxy}/api/v1/namespaces/{NAMESPACE}/configmaps");
    let selector = format!("fieldSelector=metadata.name%3D{name}");
    let mut backoff = Duration::from_millis(200);
    let mut rv: Option<String> = None;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let result = match &rv {
            None => list(&client, &format!("{base}?{selector}"))
                .await
                .map(|(cfg, v)| {
                    tx.send_if_modified(|c| replace(c, cfg));
                    synced.send_replace(true);
                    rv = Some(v);
                }),
            Some(v) => {
                let timeout = rand::rng().random_range(300..600);
                let url = format!(
                    "{base}?{selector}&watch=true&allowWatchBookmarks=true&resourceVersion={v}&timeoutSeconds={timeout}"
                );
                watch_once(&client, &url, &tx, &shutdown).await.map(|last| {
                    if let Some(last) = last {
                        rv = Some(last);
                    }
                })
            }
        };
        match result {
            Ok(()) => {
                backoff = Duration::from_millis(200);
                continue;
            }
            Err(Error::Expired) => {
                rv = None;
                continue;
            }
            Err(e) => {
                tracing::debug!(configmap = %name, error = %e, "leader-hub ConfigMap watch failed; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

fn replace(current: &mut LeaderConfig, new: LeaderConfig) -> bool {
    if *current == new {
        return false;
    }
    *current = new;
    true
}

fn request(url: &str) -> Result<Request<Empty<Bytes>>, Error> {
    Request::builder()
        .uri(url)
        .header(header::USER_AGENT, crate::user_agent())
        .header(header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| Error::Upstream(e.to_string()))
}

async fn list(client: &Plain, url: &str) -> Result<(LeaderConfig, String), Error> {
    let fut = async {
        let resp = client
            .request(request(url)?)
            .await
            .map_err(|e| Error::Upstream(crate::remote::health::error_chain(&e)))?;
        let code = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Upstream(e.to_string()))?
            .to_bytes();
        if !code.is_success() {
            return Err(Error::Status(code));
        }
        let list: Value =
            serde_json::from_slice(&body).map_err(|e| Error::Upstream(e.to_string()))?;
        let cfg = list["items"]
            .as_array()
            .and_then(|items| items.first())
            .map(LeaderConfig::from_configmap)
            .unwrap_or_default();
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("0")
            .to_owned();
        Ok((cfg, rv))
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .map_err(|_| Error::Upstream("list timed out".into()))?
}

/// One watch; returns the last resourceVersion seen when it ends.
async fn watch_once(
    client: &Plain,
    url: &str,
    tx: &watch::Sender<LeaderConfig>,
    shutdown: &CancellationToken,
) -> Result<Option<String>, Error> {
    let resp = client
        .request(request(url)?)
        .await
        .map_err(|e| Error::Upstream(crate::remote::health::error_chain(&e)))?;
    match resp.status() {
        StatusCode::GONE => return Err(Error::Expired),
        c if !c.is_success() => return Err(Error::Status(c)),
        _ => {}
    }
    let mut body = resp.into_body();
    let mut decoder = WatchDecoder::new(Format::Json);
    let mut last = None;
    loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => return Ok(last),
            f = body.frame() => f,
        };
        let Some(frame) = frame else {
            return Ok(last);
        };
        let Ok(data) = frame
            .map_err(|e| Error::Upstream(e.to_string()))?
            .into_data()
        else {
            continue;
        };
        decoder.push(&data);
        while let Some(event) = decoder
            .next_event()
            .map_err(|e| Error::Upstream(e.to_string()))?
        {
            let object: Value = serde_json::from_slice(event.object())
                .map_err(|e| Error::Upstream(e.to_string()))?;
            if event.event_type == EventType::Error {
                if object["code"].as_u64() == Some(410) {
                    return Err(Error::Expired);
                }
                return Err(Error::Upstream(format!("watch error: {object}")));
            }
            if let Some(v) = object["metadata"]["resourceVersion"].as_str() {
                last = Some(v.to_owned());
            }
            match event.event_type {
                EventType::Added | EventType::Modified => {
                    let cfg = LeaderConfig::from_configmap(&object);
                    tx.send_if_modified(|c| replace(c, cfg));
                }
                EventType::Deleted => {
                    tx.send_if_modified(|c| replace(c, LeaderConfig::default()));
                }
                _ => {}
            }
        }
    }
}
