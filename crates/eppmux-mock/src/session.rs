//! One mock registry session: the network model (frames arrive and leave half a round trip after
//! they are sent, processing is serial) and the faults a command can meet on the way.
//!
//! Three tasks model the network: a reader stamps each frame with the time it would arrive
//! (now + RTT/2), the session itself processes frames in order (each taking the processing
//! time, on the model's clock: the answer is made at once and stamped with when its processing
//! ends), and a writer sends each answer RTT/2 after that stamp. With an RTT of zero this is a
//! plain read-process-write loop; with one, pipelined commands overlap in flight the way they do
//! on a real network.
//!
//! The registry's host is modelled too: when the registry stops reading, its receive buffer still
//! takes bytes up to its size (beyond it, and the sockets' own buffers, the sender's writes
//! stall), and when it closes a session, frames already on their way still arrive until the peer
//! closes. Those frames, and the ones it had read but not yet processed when it stopped or closed,
//! are recorded as unprocessed, so that a test can tell a command the registry never saw from
//! one that reached it after it had stopped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::codec::{Decoder, FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use eppmux_wire::epp::{self, Message};
use eppmux_wire::frame::{encode_frame, EppCodec};

use crate::clock;
use crate::commands::{answer, greeting, After};
use crate::config::Fault;
use crate::state::{Exchange, Session, Shared};

/// How many bytes the registry's host takes off a connection the registry stopped reading: a
/// kernel's receive buffer. Beyond it, the sender's writes stall.
const RECEIVE_BUFFER: usize = 64 << 10;

/// How long a connection the registry closed still takes frames already on their way, when the
/// peer does not close its side first.
const LINGER: Duration = Duration::from_secs(1);

/// What the session sends, through the network model.
enum Out {
    Frame(Bytes),
    /// Bytes written as they are (for faults that break framing).
    Raw(Vec<u8>),
}

/// The session's side of the network model: frames in (stamped with when they arrive), answers
/// out (sent half a round trip after they were made).
struct Link {
    /// Frames read, with the moment each would have arrived.
    inbox: mpsc::UnboundedReceiver<(Instant, Bytes)>,
    /// Answers for the writer, with the moment each leaves.
    out: mpsc::UnboundedSender<(Instant, Out)>,
    half_rtt: Duration,
    /// When the answer being made counts as made: the end of the (virtual) processing of the
    /// current frame.
    made: Instant,
    /// Received and not yet answered, for the pipelining statistics.
    unanswered: Arc<AtomicUsize>,
    /// Cancelled when the registry has closed the session: what arrives now is not processed.
    closed: CancellationToken,
    /// Cancelled when this session stops reading (a fault) but keeps the connection.
    mute: CancellationToken,
    reading: JoinHandle<()>,
    writing: JoinHandle<()>,
}

impl Link {
    fn start<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        stream: S,
        id: u64,
        shared: &Arc<Shared>,
        shutdown: &CancellationToken,
    ) -> Link {
        let codec = EppCodec::new(shared.cfg.max_frame);
        let (rd, wr) = tokio::io::split(stream);
        let half_rtt = shared.cfg.rtt / 2;
        let closed = CancellationToken::new();
        let mute = CancellationToken::new();
        let unanswered = Arc::new(AtomicUsize::new(0));
        let (in_tx, inbox) = mpsc::unbounded_channel();
        let (out, outbox) = mpsc::unbounded_channel();
        let reader = Reader {
            frames: FramedRead::new(rd, codec.clone()),
            to_session: in_tx,
            id,
            half_rtt,
            shared: shared.clone(),
            unanswered: unanswered.clone(),
            closed: closed.clone(),
            mute: mute.clone(),
            shutdown: shutdown.clone(),
        };
        let reading = tokio::spawn(reader.run());
        let writing = tokio::spawn(write(FramedWrite::new(wr, codec), outbox, shared.clone()));
        Link {
            inbox,
            out,
            half_rtt,
            made: Instant::now(),
            unanswered,
            closed,
            mute,
            reading,
            writing,
        }
    }

    /// Sends `item` half a round trip after the current answer was made (or after `delay` more).
    fn send_after(&self, delay: Duration, item: Out) {
        let at = (self.made + delay).max(Instant::now()) + self.half_rtt;
        let _ = self.out.send((at, item));
    }

    fn send(&self, item: Out) {
        self.send_after(Duration::ZERO, item);
    }

    /// One command fewer awaits its answer.
    fn answered(&self) {
        self.unanswered.fetch_sub(1, Ordering::Relaxed);
    }

    /// Lets the writer finish what was sent (and close with close_notify). Frames read and not
    /// processed are abandoned; the reader goes on taking what is still on its way
    /// ([`Reader::linger`]); the handle returned ends with it.
    async fn close(mut self, id: u64, shared: &Shared) -> JoinHandle<()> {
        self.closed.cancel();
        self.abandon_queued(id, shared);
        drop(self.out);
        let _ = self.writing.await;
        self.reading
    }

    /// The registry stopped reading or closed: frames read and not yet processed never will be.
    fn abandon_queued(&mut self, id: u64, shared: &Shared) {
        while let Ok((_, frame)) = self.inbox.try_recv() {
            shared.unprocessed(id, frame);
            self.answered();
        }
    }
}

/// The reading task: frames off the connection, into the session's inbox.
struct Reader<R> {
    frames: FramedRead<R, EppCodec>,
    to_session: mpsc::UnboundedSender<(Instant, Bytes)>,
    id: u64,
    half_rtt: Duration,
    shared: Arc<Shared>,
    unanswered: Arc<AtomicUsize>,
    closed: CancellationToken,
    mute: CancellationToken,
    /// The registry stops: stop lingering.
    shutdown: CancellationToken,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    async fn run(mut self) {
        let mut switch = self.shared.reading.subscribe();
        loop {
            let next = tokio::select! {
                n = self.frames.next() => n,
                _ = self.closed.cancelled() => break,
                // Stopped reading for good, the connection stays open.
                _ = self.mute.cancelled() => {
                    self.hold(true).await;
                    break;
                }
                _ = until(&mut switch, false) => {
                    tokio::select! {
                        _ = until(&mut switch, true) => {
                            // What was held comes first, in order.
                            if !self.deliver_held() {
                                break;
                            }
                            continue;
                        }
                        _ = self.hold(false) => break,
                    }
                }
            };
            // The peer closed (or broke the framing): nothing more can arrive.
            let Some(Ok(frame)) = next else { return };
            if self.mute.is_cancelled() || self.closed.is_cancelled() {
                // Read just as the registry stopped: it never processes it.
                self.shared.unprocessed(self.id, frame);
                if self.mute.is_cancelled() {
                    self.hold(true).await;
                }
                break;
            }
            if !self.arrived(frame) {
                break;
            }
        }
        self.linger().await;
    }

    /// Reading resumed: the complete frames held in the read buffer go to the session. False
    /// once it is gone.
    fn deliver_held(&mut self) -> bool {
        while let Some(frame) = self.next_held() {
            if !self.arrived(frame) {
                return false;
            }
        }
        true
    }

    /// The registry stopped reading: its host still takes bytes up to its receive buffer, then
    /// the sender's writes stall. The bytes stay in the read buffer, read in order if reading
    /// resumes; when it never will (`for_good`), each frame is recorded as unprocessed as soon as
    /// it is complete. Returns when the session is closed.
    async fn hold(&mut self, for_good: bool) {
        let mut chunk = vec![0u8; 8 << 10];
        let mut held = self.frames.read_buffer().len();
        loop {
            if for_good {
                self.record_unprocessed();
            }
            if held >= RECEIVE_BUFFER {
                break;
            }
            let want = (RECEIVE_BUFFER - held).min(chunk.len());
            let n = tokio::select! {
                // Cancel-safe: bytes are taken only when the read completes.
                r = self.frames.get_mut().read(&mut chunk[..want]) => r,
                _ = self.closed.cancelled() => return,
            };
            match n {
                Ok(n) if n > 0 => {
                    held += n;
                    self.frames.read_buffer_mut().extend_from_slice(&chunk[..n]);
                }
                _ => break,
            }
        }
        self.closed.cancelled().await;
    }

    /// Takes the complete frames out of the read buffer, recorded as never processed.
    fn record_unprocessed(&mut self) {
        while let Some(frame) = self.next_held() {
            self.shared.unprocessed(self.id, frame);
        }
    }

    /// The next complete frame in the read buffer, decoded here because the framed reader only
    /// decodes again once more bytes arrive (the codec keeps no state between frames).
    fn next_held(&mut self) -> Option<Bytes> {
        let mut codec = self.frames.decoder().clone();
        codec.decode(self.frames.read_buffer_mut()).ok().flatten()
    }

    /// The registry closed the session: frames held or still on their way arrive until the peer
    /// closes too (bounded by [`LINGER`] and shutdown), recorded as arrived unprocessed.
    async fn linger(mut self) {
        self.record_unprocessed();
        let Reader {
            mut frames,
            id,
            shared,
            shutdown,
            ..
        } = self;
        let drain = async {
            while let Some(Ok(frame)) = frames.next().await {
                shared.unprocessed(id, frame);
            }
        };
        tokio::select! {
            _ = drain => {}
            _ = sleep(LINGER) => {}
            _ = shutdown.cancelled() => {}
        }
    }

    /// Counts a frame and passes it on; false once the session is gone.
    fn arrived(&self, frame: Bytes) -> bool {
        let shared = &self.shared;
        shared.state().received.push((self.id, frame.clone()));
        shared.bump(&shared.stats.frames_received);
        let n = self.unanswered.fetch_add(1, Ordering::Relaxed) + 1;
        if shared.stats.peak_in_flight.fetch_max(n, Ordering::Relaxed) < n {
            shared.changed.send_replace(());
        }
        self.to_session
            .send((Instant::now() + self.half_rtt, frame))
            .is_ok()
    }
}

/// The writing task: each answer at its time, then a clean close. How late each one left is
/// kept: it is how far the model's clock is from the configured figures.
async fn write<W: AsyncWrite + Unpin>(
    mut writer: FramedWrite<W, EppCodec>,
    mut outbox: mpsc::UnboundedReceiver<(Instant, Out)>,
    shared: Arc<Shared>,
) {
    while let Some((at, item)) = outbox.recv().await {
        clock::sleep_until(at).await;
        let late = Instant::now().saturating_duration_since(at);
        shared.state().lateness.push(late);
        let ok = match item {
            Out::Frame(frame) => writer.send(frame).await.is_ok(),
            Out::Raw(bytes) => {
                let io = writer.get_mut();
                io.write_all(&bytes).await.is_ok() && io.flush().await.is_ok()
            }
        };
        if !ok {
            break;
        }
    }
    let _ = timeout(Duration::from_secs(1), writer.close()).await;
}

/// Waits until the reading switch is `want` (forever if the registry is gone).
async fn until(switch: &mut watch::Receiver<bool>, want: bool) {
    while *switch.borrow_and_update() != want {
        if switch.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Serves one registry session until it closes, idles out or the registry stops.
pub(crate) async fn serve_session<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    id: u64,
    cert: Option<String>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let mut link = Link::start(stream, id, &shared, &shutdown);
    link.send(Out::Frame(greeting(&shared.cfg.sv_id)));
    let mut session = Session {
        id,
        clid: None,
        cert,
        forgotten: false,
    };
    while let Some(frame) = next_frame(&mut link, &mut session, &shared, &shutdown).await {
        if handle(frame, &mut link, &mut session, &shared, &shutdown).await == After::Close {
            break;
        }
    }
    let reading = link.close(id, &shared).await;
    if let Some(clid) = session.clid {
        let mut st = shared.state();
        if let Some(n) = st.sessions.get_mut(&clid) {
            *n = n.saturating_sub(1);
        }
        if let Some(n) = session.cert.and_then(|c| st.live_by_cert.get_mut(&c)) {
            *n = n.saturating_sub(1);
        }
        drop(st);
        shared.stats.active_sessions.fetch_sub(1, Ordering::Relaxed);
        shared.changed.send_replace(());
    }
    let _ = reading.await;
    debug!("mock registry session ended");
}

/// The next frame once its processing is due, or None when the session is over (closed, idle
/// timeout without `idle_forget`, registry stopping).
async fn next_frame(
    link: &mut Link,
    session: &mut Session,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Option<Bytes> {
    loop {
        // A forgotten session has nothing left to time out.
        let idle = if session.forgotten {
            Duration::from_secs(365 * 86_400)
        } else {
            shared.cfg.idle_timeout
        };
        let next = tokio::select! {
            n = timeout(idle, link.inbox.recv()) => n,
            _ = shutdown.cancelled() => return None,
        };
        let Ok(next) = next else {
            shared.bump(&shared.stats.idle_timeouts);
            if !shared.cfg.idle_forget {
                info!("mock registry: closing idle session");
                return None;
            }
            info!("mock registry: idle session forgotten");
            session.forgotten = true;
            continue;
        };
        let (arrives, frame) = next?;
        // Processing is serial: it starts when the frame has arrived and the previous one is
        // done, and takes the processing time. It is not waited out here: the answer is made at
        // once and the writer holds it until `made` plus half a round trip, so that a command
        // costs one timed wait, not two (each wait costs a wake-up, a fraction of a millisecond
        // on a busy machine). A login waits for its own time (`commands::answer`).
        link.made = arrives.max(link.made).max(Instant::now()) + shared.cfg.latency;
        return Some(frame);
    }
}

/// One frame: its fault (if any) before processing, the processing, its fault after.
async fn handle(
    frame: Bytes,
    link: &mut Link,
    session: &mut Session,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> After {
    let sniffed = epp::sniff(&frame);
    let fault = match &sniffed {
        Ok(Message::Command(c)) if session.clid.is_some() && c.verb != "logout" => {
            shared.next_fault()
        }
        _ => None,
    };
    let cltrid = match &sniffed {
        Ok(Message::Command(c)) => c.cltrid.clone(),
        _ => None,
    };
    if let Some(fault) = fault {
        let early = before_processing(fault, cltrid, &frame, link, session, shared, shutdown);
        if let Some(after) = early.await {
            return after;
        }
    }
    let (response, after) = answer(&frame, sniffed, session, shared, link.made).await;
    record(shared, session.id, frame, response.clone(), fault);
    match fault {
        Some(fault) => after_processing(fault, response, after, link, shared, shutdown).await,
        None => {
            link.send(Out::Frame(response));
            link.answered();
            after
        }
    }
}

/// A command and its answer, in the transcript.
fn record(shared: &Shared, connection: u64, command: Bytes, response: Bytes, f: Option<Fault>) {
    shared.state().transcript.push(Exchange {
        connection,
        command,
        response,
        fault: f.map(|f| f.name()),
    });
    shared.bump(&shared.stats.commands);
}

/// A fault that strikes before the command is processed. Some(after) when the command is not
/// processed at all.
async fn before_processing(
    fault: Fault,
    cltrid: Option<String>,
    frame: &Bytes,
    link: &mut Link,
    session: &mut Session,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Option<After> {
    let answer_unprocessed = |code: u16, msg: &str, cltrid: Option<&str>| {
        let response = epp::response(code, msg, cltrid, &shared.svtrid());
        link.send(Out::Frame(response.clone()));
        response
    };
    match fault {
        Fault::DropBeforeExecute => Some(After::Close),
        Fault::NotLoggedIn => {
            session.forgotten = true;
            None
        }
        Fault::Delay(d) => {
            sleep(d).await;
            None
        }
        Fault::StopReading => {
            link.mute.cancel();
            link.abandon_queued(session.id, shared);
            tokio::select! {
                _ = sleep(shared.cfg.idle_timeout) => {}
                _ = shutdown.cancelled() => {}
            }
            Some(After::Close)
        }
        Fault::NoClTrid | Fault::UseError => {
            let response = if fault == Fault::NoClTrid {
                answer_unprocessed(2001, "Command syntax error", None)
            } else {
                answer_unprocessed(2002, "Command use error", cltrid.as_deref())
            };
            record(shared, session.id, frame.clone(), response, Some(fault));
            link.answered();
            Some(After::Continue)
        }
        Fault::Close2500 => {
            let msg = "Command failed; server closing connection";
            answer_unprocessed(2500, msg, cltrid.as_deref());
            Some(After::Close)
        }
        Fault::EndSession => {
            let msg = "Command completed successfully; ending session";
            answer_unprocessed(1500, msg, cltrid.as_deref());
            session.forgotten = true;
            link.answered();
            Some(After::Continue)
        }
        _ => None,
    }
}

/// A fault that strikes after the command was processed, on its answer.
async fn after_processing(
    fault: Fault,
    response: Bytes,
    after: After,
    link: &mut Link,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> After {
    match fault {
        Fault::DropAfterExecute => return After::Close,
        Fault::OversizeResponse | Fault::StallMidFrame => {
            let raw = if fault == Fault::OversizeResponse {
                let mut raw = (64u32 << 20).to_be_bytes().to_vec();
                raw.extend_from_slice(&response);
                raw
            } else {
                let wire = encode_frame(&response);
                wire[..wire.len() / 2].to_vec()
            };
            link.send(Out::Raw(raw));
            // Silent until the peer gives up or the registry stops.
            tokio::select! {
                _ = async { while link.inbox.recv().await.is_some() {} } => {}
                _ = shutdown.cancelled() => {}
            }
            return After::Close;
        }
        Fault::MalformedResponse => {
            let broken =
                b"<epp xmlns=\"urn:ietf:params:xml:ns:epp-1.0\"><response><result code=\"1000\">";
            link.send(Out::Frame(Bytes::from_static(broken)));
            return After::Continue;
        }
        Fault::AnswerTwice(delay) => {
            link.send(Out::Frame(response.clone()));
            link.send_after(delay, Out::Frame(response));
        }
        _ => link.send(Out::Frame(response)),
    }
    link.answered();
    if after == After::Continue && fault == Fault::Unsolicited {
        let extra = epp::response(1000, "Unsolicited", None, &shared.svtrid());
        link.send(Out::Frame(extra));
    }
    after
}
