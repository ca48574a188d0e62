//! gRPC calls made by hand with the `h2` crate, for tests that need what a
//! generated client hides: frames it would never send (bad length prefixes,
//! flags, resets), and every byte of the answer (headers, body, trailers with
//! their `-bin` values decoded) to search.

use std::time::Duration;

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use h2::client::{ResponseFuture, SendRequest};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::harness::TestMesh;

/// An `h2` connection to the gateway, and the task driving it, whose result
/// says how the connection ended.
pub(crate) async fn h2_connect(mesh: &TestMesh) -> (SendRequest<Bytes>, JoinHandle<Result<(), h2::Error>>) {
    let tcp = TcpStream::connect(&mesh.gateway_addr).await.expect("the gateway accepts connections");
    let (send_request, connection) = h2::client::handshake(tcp).await.expect("the HTTP/2 handshake succeeds");
    (send_request, tokio::spawn(connection))
}

/// The request head of a gRPC call to `path` through the gateway.
pub(crate) fn grpc_head(mesh: &TestMesh, path: &str) -> http::request::Builder {
    http::Request::post(format!("http://{}{path}", mesh.gateway_addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
}

/// One gRPC length-prefixed message whose prefix claims `declared_len` bytes.
pub(crate) fn grpc_frame(compressed: bool, declared_len: u32, payload: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + payload.len());
    frame.put_u8(u8::from(compressed));
    frame.put_u32(declared_len);
    frame.put_slice(payload);
    frame.freeze()
}

/// One well-formed gRPC message.
pub(crate) fn grpc_message(payload: &[u8]) -> Bytes {
    grpc_frame(false, u32::try_from(payload.len()).expect("a test message is small"), payload)
}

/// How a call made with `h2` ended, and everything it answered.
#[derive(Debug, Default)]
pub(crate) struct CallEnd {
    pub(crate) http_status: Option<u16>,
    pub(crate) grpc_status: Option<i32>,
    pub(crate) grpc_message: String,
    /// Response headers and trailers as `name: value` lines; `-bin` values
    /// base64-decoded (lossily, as text) so an `ErrorInfo` inside can be searched.
    pub(crate) metadata: Vec<String>,
    /// The response body as received (gRPC frames).
    pub(crate) body: Vec<u8>,
    /// The stream's or the connection's error, when the call did not end with trailers.
    pub(crate) h2_error: Option<h2::Error>,
}

impl CallEnd {
    fn record_metadata(&mut self, headers: &http::HeaderMap) {
        for (name, value) in headers {
            let text = if name.as_str().ends_with("-bin") {
                // gRPC sends `-bin` values in base64 with or without padding.
                let unpadded = value.as_bytes().trim_ascii();
                let unpadded = &unpadded[..unpadded.iter().rposition(|byte| *byte != b'=').map_or(0, |at| at + 1)];
                let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(unpadded)
                    .unwrap_or_else(|_| value.as_bytes().to_vec());
                String::from_utf8_lossy(&decoded).into_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            self.metadata.push(format!("{name}: {text}"));
        }
        if let Some(status) = headers.get("grpc-status").and_then(|value| value.to_str().ok()?.parse().ok()) {
            self.grpc_status = Some(status);
            let message = headers.get("grpc-message").and_then(|value| value.to_str().ok()).unwrap_or_default();
            message.clone_into(&mut self.grpc_message);
        }
    }

    /// Everything the caller received, as one lossy text to search.
    pub(crate) fn received_text(&self) -> String {
        format!("{}\n{}\n{}", self.grpc_message, self.metadata.join("\n"), String::from_utf8_lossy(&self.body))
    }
}

/// Reads a call's response to the end: trailers-only headers, or the body and its trailers.
pub(crate) async fn finish_call(response: ResponseFuture) -> CallEnd {
    let mut end = CallEnd::default();
    read_response(response, &mut end).await;
    end
}

/// Like [`finish_call`], but stops reading after `limit`: a server stream
/// may run on after its deadline, since deadlines bound only the headers.
/// Returns what arrived, and whether the limit cut it.
pub(crate) async fn finish_call_within(response: ResponseFuture, limit: Duration) -> (CallEnd, bool) {
    let mut end = CallEnd::default();
    let cut = tokio::time::timeout(limit, read_response(response, &mut end)).await.is_err();
    (end, cut)
}

async fn read_response(response: ResponseFuture, end: &mut CallEnd) {
    let response = match response.await {
        Ok(response) => response,
        Err(error) => {
            end.h2_error = Some(error);
            return;
        }
    };
    end.http_status = Some(response.status().as_u16());
    end.record_metadata(response.headers());
    if end.grpc_status.is_some() {
        return;
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(chunk) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                end.body.extend_from_slice(&chunk);
            }
            Err(error) => {
                end.h2_error = Some(error);
                return;
            }
        }
    }
    match body.trailers().await {
        Ok(Some(trailers)) => end.record_metadata(&trailers),
        Ok(None) => {}
        Err(error) => end.h2_error = Some(error),
    }
}

/// Sends one gRPC call on a connection of its own, with `body` as its whole
/// request body and `extra_headers` beside the gRPC ones.
pub(crate) async fn call_with_body(
    mesh: &TestMesh,
    path: &str,
    extra_headers: &[(&str, &str)],
    body: Bytes,
) -> CallEnd {
    let (mut send_request, _connection) = h2_connect(mesh).await;
    let mut head = grpc_head(mesh, path);
    for (name, value) in extra_headers {
        head = head.header(*name, *value);
    }
    let (response, mut stream) =
        send_request.send_request(head.body(()).expect("a valid request head"), false).expect("the request is sent");
    stream.send_data(body, true).expect("the body is sent");
    finish_call(response).await
}
