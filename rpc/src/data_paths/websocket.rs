//! The console over a WebSocket (`GET /console` with `Upgrade: websocket`): guest output goes
//! out as binary messages; text or binary messages from the client are typed in; pings are
//! answered; a close ends it.

use super::console::{screen, Tap};
use super::console_pump::Keys;
use actix_codec::{Decoder, Encoder};
use actix_http::ws::{hash_key, Codec, Frame, Message};
use actix_web::http::StatusCode;
use actix_web::web::BytesMut;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use tokio::sync::mpsc;

/// Largest frame accepted from the client.
const MAX_FRAME: usize = 64 * 1024;

/// Answers the upgrade and runs the console over it.
pub(super) fn serve(req: &HttpRequest, body: web::Payload, tap: Tap) -> HttpResponse {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec())
        .unwrap_or_default();
    let accept = hash_key(&key);
    let (out_tx, out_rx) = mpsc::channel::<Message>(64);
    actix_web::rt::spawn(client_side(body, tap.keys.clone(), out_tx.clone()));
    actix_web::rt::spawn(guest_side(tap, out_tx));
    let frames = futures_util::stream::unfold((out_rx, Codec::new()), |(mut rx, mut codec)| async move {
        let msg = rx.recv().await?;
        let last = matches!(msg, Message::Close(_));
        let mut buf = BytesMut::new();
        let item = codec
            .encode(msg, &mut buf)
            .map(|()| buf.freeze())
            .map_err(|e| std::io::Error::other(e.to_string()));
        if last {
            rx.close();
        }
        Some((item, (rx, codec)))
    });
    HttpResponse::build(StatusCode::SWITCHING_PROTOCOLS)
        .upgrade("websocket")
        .insert_header(("sec-websocket-accept", accept.as_slice()))
        .streaming(frames)
}

/// Guest output → binary messages; a close when the console ends.
async fn guest_side(tap: Tap, out: mpsc::Sender<Message>) {
    let mut tap = tap;
    loop {
        match screen(tap).await {
            Some((Ok(bytes), next)) => {
                if out.send(Message::Binary(bytes)).await.is_err() {
                    return;
                }
                tap = next;
            }
            _ => {
                let _ = out.send(Message::Close(None)).await;
                return;
            }
        }
    }
}

/// Client frames → console input; pings answered, close honoured.
async fn client_side(mut body: web::Payload, keys: Keys, out: mpsc::Sender<Message>) {
    let mut codec = Codec::new().max_size(MAX_FRAME);
    let mut buf = BytesMut::new();
    while let Some(Ok(chunk)) = body.next().await {
        buf.extend_from_slice(&chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(Frame::Binary(b))) | Ok(Some(Frame::Text(b))) => {
                    if !keys.type_in(b) {
                        return;
                    }
                }
                Ok(Some(Frame::Ping(p))) => {
                    let _ = out.send(Message::Pong(p)).await;
                }
                Ok(Some(Frame::Close(reason))) => {
                    let _ = out.send(Message::Close(reason)).await;
                    return;
                }
                Ok(Some(Frame::Pong(_))) | Ok(Some(Frame::Continuation(_))) => {}
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "console WebSocket protocol error");
                    let _ = out.send(Message::Close(None)).await;
                    return;
                }
            }
        }
    }
}
