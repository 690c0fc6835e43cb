//! One EPP connection of the load generator: connect (TCP, then TLS when asked), greeting, login,
//! one command at a time, logout; and the frames it sends.

use std::net::SocketAddr;

use anyhow::{bail, Result};
use bytes::Bytes;
use eppmux::epp::{self, Message};
use eppmux::frame::EppCodec;
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
/// A framed EPP connection.
pub type Conn = Framed<Box<dyn Io>, EppCodec>;

/// Where connections go and how they log in.
pub struct Target {
    pub addr: SocketAddr,
    /// None: plain TCP.
    pub connector: Option<TlsConnector>,
    pub server_name: ServerName<'static>,
    /// The `<login>` frame.
    pub login: Bytes,
}

/// What a login attempt came to.
pub enum Login {
    /// Logged in.
    Ok(Conn),
    /// Answered with this code instead of 1000 (2502: the session cap).
    Refused(u16),
}

impl Target {
    /// Connects, reads the greeting and logs in.
    pub async fn open(&self) -> Result<Login> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = match &self.connector {
            Some(c) => Box::new(c.connect(self.server_name.clone(), tcp).await?),
            None => Box::new(tcp),
        };
        let mut conn = Framed::new(io, EppCodec::default());
        let greeting = next(&mut conn).await?;
        if !matches!(epp::sniff(&greeting), Ok(Message::Greeting(_))) {
            bail!("first frame is not a greeting");
        }
        match exchange(&mut conn, self.login.clone()).await? {
            1000 => Ok(Login::Ok(conn)),
            code => Ok(Login::Refused(code)),
        }
    }
}

/// The `<login>` frame of an account.
pub fn login_frame(clid: &str, password: &str) -> Bytes {
    Bytes::from(format!(
        "<epp xmlns=\"urn:ietf:params:xml:ns:epp-1.0\"><command><login><clID>{clid}</clID><pw>{password}</pw>\
         <options><version>1.0</version><lang>en</lang></options><svcs>\
         <objURI>urn:ietf:params:xml:ns:domain-1.0</objURI></svcs></login><clTRID>load-login</clTRID></command></epp>"
    ))
}

async fn next(conn: &mut Conn) -> Result<Bytes> {
    match conn.next().await {
        Some(Ok(f)) => Ok(f),
        Some(Err(e)) => Err(e.into()),
        None => bail!("connection closed"),
    }
}

/// Sends one frame and returns the result code of its answer.
pub async fn exchange(conn: &mut Conn, frame: Bytes) -> Result<u16> {
    conn.send(frame).await?;
    let answer = next(conn).await?;
    match epp::sniff(&answer) {
        Ok(Message::Response(r)) => Ok(r.code),
        other => bail!("not a response: {other:?}"),
    }
}

/// `<logout>`, its answer, and a clean close.
pub async fn logout(mut conn: Conn) -> Result<()> {
    let frame = "<epp xmlns=\"urn:ietf:params:xml:ns:epp-1.0\"><command><logout/><clTRID>load-out</clTRID></command></epp>";
    let code = exchange(&mut conn, Bytes::from_static(frame.as_bytes())).await?;
    let _ = conn.close().await;
    if code != 1500 {
        bail!("logout answered {code}");
    }
    Ok(())
}

/// Relative weights of check, info and create.
#[derive(Debug, Clone, Copy)]
pub struct Mix(pub [u32; 3]);

impl Mix {
    /// The `n`th command of client `client`: a domain check, info or create on a name of its own.
    pub fn command(&self, client: &str, n: u64) -> Bytes {
        let [c, i, _] = self.0;
        let total: u32 = self.0.iter().sum();
        let pick = (n.wrapping_mul(2654435761) % u64::from(total.max(1))) as u32;
        let verb = if pick < c {
            "check"
        } else if pick < c + i {
            "info"
        } else {
            "create"
        };
        Bytes::from(format!(
            "<epp xmlns=\"urn:ietf:params:xml:ns:epp-1.0\"><command><{verb}><domain:{verb} \
             xmlns:domain=\"urn:ietf:params:xml:ns:domain-1.0\"><domain:name>l{client}-{n}.bench</domain:name>\
             </domain:{verb}></{verb}><clTRID>L{client}-{n}</clTRID></command></epp>"
        ))
    }
}
