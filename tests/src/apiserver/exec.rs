//! Pod exec/attach/portforward upgrades. WebSocket with the
//! `v5.channel.k8s.io` / `v4.channel.k8s.io` subprotocols (what kubectl 1.32
//! uses by default) runs a fake exec: `echo ARGS...` writes the arguments to
//! stdout; `cat` copies stdin to stdout until stdin closes (v5 close signal
//! or the socket closing); then the error channel carries the exit Status
//! and the socket closes. Port-forward over WebSocket (`v4.channel.k8s.io`)
//! echoes what is sent to each port. SPDY/3.1 is answered with its 101
//! handshake only:
//! the SPDY framing itself is not implemented, so the session is closed
//! right after (clients then report a stream error).

use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderValue, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use super::objects::meta_str;
use super::response::{self, Body};
use super::route::ApiRequest;
use super::status::ApiError;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
/// v5: a client message `[255, channel]` closes that channel (stdin).
const CLOSE: u8 = 255;

const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// The kubelet's WebSocket port-forward protocol.
const PORT_FORWARD_PROTOCOLS: &[&str] = &["v4.channel.k8s.io"];

pub async fn serve(
    mut req: ApiRequest,
    sub: &str,
    pod: &Value,
) -> Result<Response<Body>, ApiError> {
    let pod_name = meta_str(pod, "name").to_owned();
    if pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(ApiError::bad_request(format!(
            "pod {pod_name} does not have a host assigned"
        )));
    }
    let containers: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    if sub != "portforward" {
        match req.param("container") {
            Some(c) if !containers.iter().any(|x| x == c) => {
                return Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {pod_name}"
                )));
            }
            None if containers.len() != 1 => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                    containers.join(" ")
                )));
            }
            _ => {}
        }
    }
    let upgrade_to = req.header(header::UPGRADE).map(str::to_ascii_lowercase);
    let Some(on_upgrade) = req.upgrade.take() else {
        return Err(ApiError::bad_request("Upgrade request required"));
    };
    match upgrade_to.as_deref() {
        Some("websocket") => websocket(req, on_upgrade, sub),
        Some(p) if p.starts_with("spdy/") => Ok(spdy_handshake_only(on_upgrade)),
        _ => Err(ApiError::bad_request("Upgrade request required")),
    }
}

fn websocket(
    req: ApiRequest,
    on_upgrade: hyper::upgrade::OnUpgrade,
    sub: &str,
) -> Result<Response<Body>, ApiError> {
    let key = req
        .header(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| ApiError::bad_request("missing Sec-WebSocket-Key"))?;
    let offered: Vec<String> = req
        .headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .collect();
    let supported = if sub == "portforward" {
        PORT_FORWARD_PROTOCOLS
    } else {
        PROTOCOLS
    };
    let Some(protocol) = offered
        .iter()
        .find(|p| supported.contains(&p.as_str()))
        .cloned()
    else {
        return Err(ApiError::bad_request(format!(
            "unable to upgrade: no supported subprotocol in {offered:?}; supported: {supported:?}"
        )));
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let command: Vec<String> = req
        .params("command")
        .into_iter()
        .map(str::to_owned)
        .collect();
    let stdin = req.param("stdin").is_some_and(|v| v == "true" || v == "1");
    let v5 = protocol == "v5.channel.k8s.io";
    let attach = sub == "attach";
    let ports = port_list(&req);
    let port_forward = sub == "portforward";
    if port_forward && ports.is_empty() {
        return Err(ApiError::bad_request("at least one port must be specified"));
    }
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                let result = if port_forward {
                    run_port_forward(ws, ports).await
                } else {
                    run_exec(ws, command, stdin, v5, attach).await
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "exec session ended with error");
                }
            }
            Err(e) => tracing::debug!(error = %e, "exec upgrade failed"),
        }
    });
    let mut resp = Response::new(response::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Ok(v) = HeaderValue::from_str(&protocol) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    Ok(resp)
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

fn port_list(req: &ApiRequest) -> Vec<u16> {
    req.params("ports")
        .into_iter()
        .flat_map(|p| p.split(','))
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

/// WebSocket port-forward: for port i, channel 2i carries data and 2i+1
/// errors; each channel starts with the port number (u16, little endian).
/// The fake pod echoes whatever is sent to a port.
async fn run_port_forward(
    mut ws: Ws,
    ports: Vec<u16>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    for (i, port) in ports.iter().enumerate() {
        let Ok(data_channel) = u8::try_from(2 * i) else {
            break;
        };
        ws.send(frame(data_channel, &port.to_le_bytes())).await?;
        ws.send(frame(data_channel + 1, &port.to_le_bytes()))
            .await?;
    }
    while let Some(msg) = ws.next().await {
        let data = match msg? {
            Message::Binary(b) => b.to_vec(),
            Message::Close(_) => break,
            _ => continue,
        };
        if let Some((&channel, payload)) = data.split_first()
            && channel % 2 == 0
            && usize::from(channel / 2) < ports.len()
            && !payload.is_empty()
        {
            ws.send(frame(channel, payload)).await?;
        }
    }
    Ok(())
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

async fn run_exec(
    mut ws: Ws,
    command: Vec<String>,
    stdin: bool,
    v5: bool,
    attach: bool,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Like the kubelet's stream server: an empty frame on the first
    // writable channel tells the client the streams are up.
    ws.send(frame(STDOUT, &[])).await?;
    let exit_code = match (attach, command.first().map(String::as_str)) {
        (false, Some("echo")) => {
            let mut out = command[1..].join(" ");
            out.push('\n');
            ws.send(frame(STDOUT, out.as_bytes())).await?;
            0
        }
        (true, _) | (false, Some("cat")) => {
            if stdin {
                copy_stdin(&mut ws, v5).await?;
            }
            0
        }
        (false, Some(other)) => {
            let msg = format!("exec: \"{other}\": executable file not found in $PATH\n");
            ws.send(frame(STDERR, msg.as_bytes())).await?;
            127
        }
        (false, None) => {
            ws.send(frame(STDERR, b"no command specified\n")).await?;
            1
        }
    };
    let status = if exit_code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {exit_code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": exit_code.to_string()}]}
        })
    };
    ws.send(frame(ERROR, status.to_string().as_bytes())).await?;
    // A normal closure (1000) is what the client reads as EOF on every stream.
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
    .await?;
    Ok(())
}

/// Echoes stdin frames to stdout until stdin is closed.
async fn copy_stdin(ws: &mut Ws, v5: bool) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    while let Some(msg) = ws.next().await {
        let data = match msg? {
            Message::Binary(b) => b.to_vec(),
            Message::Close(_) => return Ok(()),
            _ => continue,
        };
        match data.split_first() {
            Some((&STDIN, payload)) if !payload.is_empty() => {
                ws.send(frame(STDOUT, payload)).await?
            }
            Some((&CLOSE, [STDIN])) if v5 => return Ok(()),
            _ => {}
        }
    }
    Ok(())
}

fn spdy_handshake_only(on_upgrade: hyper::upgrade::OnUpgrade) -> Response<Body> {
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            tracing::warn!(
                "SPDY exec is not implemented by the apiserver double; closing the session"
            );
            drop(upgraded);
        }
    });
    let mut resp = Response::new(response::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    h.insert(
        "X-Stream-Protocol-Version",
        HeaderValue::from_static("v4.channel.k8s.io"),
    );
    resp
}
