//! What an open element is to EPP, as the sniffer keeps it: [`Node`]s on a stack (instead of a
//! path of names, so nothing is allocated per element), the command [`Verb`]s, where under
//! `<command>` the reading is ([`Stage`]), and which value is being captured ([`Field`]).

/// Which text the sniffer is collecting at the moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    ClTrid,
    SvTrid,
    ClId,
    Pw,
    NewPw,
    ResultMsg,
    SvId,
    SvDate,
    ObjUri,
    ExtUri,
    /// An object's identifier: `<domain:name>`, `<host:name>`, `<contact:id>` directly under
    /// the object element.
    ObjectId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verb {
    Check,
    Info,
    Poll,
    Transfer,
    Create,
    Delete,
    Renew,
    Update,
    Login,
    Logout,
}

impl Verb {
    pub(super) fn from_name(name: &str) -> Option<Verb> {
        Some(match name {
            "check" => Verb::Check,
            "info" => Verb::Info,
            "poll" => Verb::Poll,
            "transfer" => Verb::Transfer,
            "create" => Verb::Create,
            "delete" => Verb::Delete,
            "renew" => Verb::Renew,
            "update" => Verb::Update,
            "login" => Verb::Login,
            "logout" => Verb::Logout,
            _ => return None,
        })
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Verb::Check => "check",
            Verb::Info => "info",
            Verb::Poll => "poll",
            Verb::Transfer => "transfer",
            Verb::Create => "create",
            Verb::Delete => "delete",
            Verb::Renew => "renew",
            Verb::Update => "update",
            Verb::Login => "login",
            Verb::Logout => "logout",
        }
    }

    /// The `op` values the EPP schema allows (`pollOpType`, `transferOpType`); empty when the verb
    /// has no `op`.
    pub(super) fn ops(self) -> &'static [&'static str] {
        match self {
            Verb::Poll => &["req", "ack"],
            Verb::Transfer => &["query", "request", "approve", "reject", "cancel"],
            _ => &[],
        }
    }

    /// Commands whose one child is the object element (`readWriteType`, `transferType`).
    pub(super) fn has_object(self) -> bool {
        !matches!(self, Verb::Poll | Verb::Login | Verb::Logout)
    }
}

/// Where under `<command>` the sniffer is: what may come next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    Verb,
    AfterVerb,
    AfterExtension,
    AfterClTrid,
}

/// An open element, as far as the sniffer cares. The stack of these replaces a path of names, so
/// nothing is allocated per element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Node {
    Epp,
    Hello,
    Command(Stage),
    /// The verb under `<command>`, and how many element children it has had so far.
    Verb(Verb, u8),
    Greeting,
    SvcMenu,
    SvcExtension,
    Response,
    /// `<result>`; true for the first one, whose code and message are read.
    Result(bool),
    TrId,
    /// An element whose text is a value (clTRID, clID, msg, …): no child elements.
    Field,
    /// The object element of an object command (`<domain:create>`): its identifiers are read.
    Object,
    /// Content eppmux does not interpret (extensions, resData, dcp, an object's details, …).
    Opaque,
}

impl Node {
    /// Elements of these kinds hold elements only: text there must be whitespace.
    pub(super) fn element_only(self) -> bool {
        matches!(
            self,
            Node::Epp | Node::Hello | Node::Command(_) | Node::Verb(..)
        )
    }
}
