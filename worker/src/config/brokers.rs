//! The broker addresses of `amqp.url` / `amqp.urls`, and keeping their
//! passwords out of every text we show.
//!
//! A fleet on a RabbitMQ cluster names every node, so that a worker or
//! client whose node is lost moves on to another by itself, without a load
//! balancer in front. A password must never reach a log, a metric, `/readyz`
//! or an error message, and the words that could carry one are not only
//! ours: a URL parser quotes its input back ("Invalid URL: 'amqp:…'") and a
//! broker quotes the vhost it could not find. So every text that may have
//! passed through them goes through [`Brokers::scrub`], which knows each
//! URL's password in both its written and its percent-decoded form.
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use std::str::FromStr;
use std::time::Duration;

/// The broker used when neither `amqp.url` nor `amqp.urls` is set.
pub const DEFAULT_BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// What stands for a password wherever one is shown.
const REDACTED: &str = "***";

/// One or more broker URLs, in the order they are tried.
#[derive(Clone)]
pub struct Brokers {
    urls: Vec<String>,
    /// Every password, as written and percent-decoded, longest first.
    secrets: Vec<String>,
}

/// A broker URL that cannot be used; says which, with its password replaced.
#[derive(Debug, thiserror::Error)]
pub enum BrokerUrlError {
    /// No URL at all (an empty list, or only commas).
    #[error("no broker URL given")]
    Empty,
    /// Both `amqp.url` and `amqp.urls` are set; holds them, redacted (or
    /// nothing, when one does not parse).
    #[error("both amqp.url and amqp.urls are set ({0}); set one of them")]
    Both(String),
    /// One of the URLs does not parse as an AMQP URL. Its text is not
    /// shown: it may hold part of a password.
    #[error(
        "broker URL {position} is not an AMQP URL ({reason}); a comma, '@' or ':' inside a user name or password must be written %2C, %40 or %3A"
    )]
    Malformed {
        /// 1-based position in the list.
        position: usize,
        /// The parser's words, the URL and passwords replaced.
        reason: String,
    },
}

impl Brokers {
    /// Parses a list of entries, each of which may itself hold several URLs
    /// separated by commas (`SHOAL_AMQP_URL=amqp://a,amqp://b` reads as two).
    /// Blank entries are skipped.
    pub fn parse<S: AsRef<str>>(
        entries: impl IntoIterator<Item = S>,
    ) -> Result<Brokers, BrokerUrlError> {
        let entries: Vec<S> = entries.into_iter().collect();
        let urls: Vec<String> = entries
            .iter()
            .flat_map(|entry| split_urls(entry.as_ref()))
            .collect();
        if urls.is_empty() {
            return Err(BrokerUrlError::Empty);
        }
        // The passwords of the URLs, and of each entry as a whole: a comma
        // written inside a password (it must be `%2C`) splits it across two
        // "URLs", neither of which has the whole password.
        let mut secrets: Vec<String> = urls
            .iter()
            .map(String::as_str)
            .chain(entries.iter().map(|entry| entry.as_ref()))
            .filter_map(password_of)
            .flat_map(|written| {
                let decoded = percent_decode(written);
                [written.to_owned(), decoded]
            })
            .filter(|secret| !secret.is_empty())
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        let brokers = Brokers { urls, secrets };
        for (i, url) in brokers.urls.iter().enumerate() {
            if let Err(reason) = AMQPUri::from_str(url) {
                // Neither the URL nor the parser's words quoting it are
                // shown: a piece of a password split at a comma is not a
                // password `scrub` knows.
                return Err(BrokerUrlError::Malformed {
                    position: i + 1,
                    reason: brokers.scrub(&reason.replace(url.as_str(), "<the URL>")),
                });
            }
        }
        Ok(brokers)
    }

    /// How many URLs there are (at least one).
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Never true: a `Brokers` holds at least one URL.
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The `i`-th URL (modulo the count), credentials included: for
    /// connecting only, never for showing.
    pub fn url(&self, i: usize) -> &str {
        &self.urls[i % self.urls.len()]
    }

    /// The `i`-th URL (modulo the count) with a query parameter added.
    pub fn url_with(&self, i: usize, key: &str, value: &str) -> String {
        let url = self.url(i);
        let join = if url.contains('?') { '&' } else { '?' };
        format!("{url}{join}{key}={value}")
    }

    /// The `i`-th URL (modulo the count) as it may be shown: the user kept,
    /// the password replaced.
    pub fn redacted(&self, i: usize) -> String {
        let url = self.url(i);
        match password_span(url) {
            Some((start, end)) => format!("{}{REDACTED}{}", &url[..start], &url[end..]),
            None => self.scrub(url),
        }
    }

    /// Every URL as it may be shown, comma-separated.
    pub fn redacted_all(&self) -> String {
        (0..self.urls.len())
            .map(|i| self.redacted(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `text` with every password of these URLs replaced: for any words
    /// that may quote a URL (parsers, the broker, errors wrapping them).
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        out
    }
}

/// How long one broker URL may take to accept a connection before the next
/// is tried: a host that no longer answers at all would otherwise hold the
/// caller for the kernel's SYN timeout (minutes) per attempt.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(10);

/// A connection to the first broker URL that answered.
pub struct Connected {
    /// The connection.
    pub connection: Connection,
    /// Which URL it is.
    pub index: usize,
    /// The URLs tried before it, each with why it refused (passwords replaced).
    pub skipped: Vec<String>,
}

/// No broker URL answered: each one, with why (passwords replaced).
#[derive(Debug, thiserror::Error)]
#[error("no broker answered: {}", .refused.iter().map(|(url, why)| format!("{url}: {why}")).collect::<Vec<_>>().join("; "))]
pub struct NoBrokerAnswered {
    refused: Vec<(String, String)>,
}

impl NoBrokerAnswered {
    /// The refusal alone when there was one URL (callers that name the
    /// broker already), else the whole message.
    pub fn reason(&self) -> String {
        match self.refused.as_slice() {
            [(_, why)] => why.clone(),
            _ => self.to_string(),
        }
    }
}

impl Brokers {
    /// Connects to the first URL that answers, trying each once, from
    /// `first` on (modulo the count), each within [`CONNECT_WITHIN`]; with
    /// `heartbeat_secs`, asks for that heartbeat. The one place workers,
    /// the client and `submit admin` connect, so that all of them skip a
    /// dead node alike and never show a password when none answers.
    pub async fn connect_first(
        &self,
        first: usize,
        heartbeat_secs: Option<u16>,
        name: &str,
    ) -> Result<Connected, NoBrokerAnswered> {
        let count = self.len();
        let mut refused = Vec::new();
        for i in (first..first + count).map(|i| i % count) {
            let uri = match heartbeat_secs {
                Some(secs) => self.url_with(i, "heartbeat", &secs.to_string()),
                None => self.url(i).to_owned(),
            };
            let connected = tokio::time::timeout(
                CONNECT_WITHIN,
                Connection::connect(
                    &uri,
                    ConnectionProperties::default().with_connection_name(name.into()),
                ),
            )
            .await;
            let why = match connected {
                Ok(Ok(connection)) => {
                    return Ok(Connected {
                        connection,
                        index: i,
                        skipped: refused
                            .into_iter()
                            .map(|(url, why)| format!("{url}: {why}"))
                            .collect(),
                    });
                }
                Ok(Err(e)) => self.scrub(&e.to_string()),
                Err(_) => format!("no answer within {} s", CONNECT_WITHIN.as_secs()),
            };
            refused.push((self.redacted(i), why));
        }
        Err(NoBrokerAnswered { refused })
    }
}

impl std::fmt::Debug for Brokers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted_all())
    }
}

/// The URLs of a comma-separated entry. A comma inside a user name or
/// password (which should be `%2C`) does not split: a piece that ends
/// before its URL's `@` takes the next piece back, so no password is cut
/// into pieces that could be shown whole.
fn split_urls(entry: &str) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for piece in entry.split(',') {
        if piece.trim().is_empty() {
            continue;
        }
        match urls.last_mut() {
            Some(last)
                if cut_in_userinfo(last) && piece.contains('@') && !piece.contains("://") =>
            {
                last.push(',');
                last.push_str(piece);
            }
            _ => urls.push(piece.to_owned()),
        }
    }
    urls.into_iter().map(|url| url.trim().to_owned()).collect()
}

/// `scheme://user…` with no `@` yet: cut before its host.
fn cut_in_userinfo(url: &str) -> bool {
    url.find("://").is_some_and(|scheme| {
        let rest = &url[scheme + 3..];
        !rest.contains('@') && !rest.contains('/')
    })
}

/// Byte range of the password in `url`: after the first `:` of the
/// user-info, up to the last `@` of the authority. Worked out on the text
/// itself, not by a URL parser, so that a URL too broken to parse still
/// has its password found.
fn password_span(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    // The authority ends at the first '/', '?' or '#' after its last '@';
    // a password may itself hold any of them when written unencoded, so
    // the last '@' before the path wins.
    let at = rest.rfind('@')?;
    let colon = rest[..at].find(':')?;
    Some((start + colon + 1, start + at))
}

fn password_of(url: &str) -> Option<&str> {
    password_span(url).map(|(start, end)| &url[start..end])
}

/// `%XX` sequences decoded, bytes kept as they are otherwise.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
            && let Ok(hex) = std::str::from_utf8(&bytes[i + 1..i + 3])
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_separated_list_is_several_urls_in_order() {
        let brokers = Brokers::parse([
            "amqp://u:p1@h1:5672/%2f, amqp://u:p2@h2:5672/%2f",
            "",
            "amqp://u:p3@h3/%2f",
        ])
        .unwrap();
        assert_eq!(brokers.len(), 3);
        assert_eq!(brokers.url(1), "amqp://u:p2@h2:5672/%2f");
        assert_eq!(
            brokers.url(4),
            "amqp://u:p2@h2:5672/%2f",
            "modulo the count"
        );
        assert_eq!(
            brokers.redacted_all(),
            "amqp://u:***@h1:5672/%2f,amqp://u:***@h2:5672/%2f,amqp://u:***@h3/%2f"
        );
        assert_eq!(
            brokers.url_with(0, "heartbeat", "30"),
            "amqp://u:p1@h1:5672/%2f?heartbeat=30"
        );
    }

    #[test]
    fn nothing_at_all_is_an_error() {
        assert!(matches!(
            Brokers::parse([" , ", ""]),
            Err(BrokerUrlError::Empty)
        ));
    }

    #[test]
    fn a_malformed_url_is_named_without_its_password() {
        // The parser's own words quote the whole URL back.
        let secret = "s3cr%21t";
        for url in [
            format!("amqp:guest:{secret}@127.0.0.1"),
            format!("http://guest:{secret}@127.0.0.1/"),
            format!("amqp://guest:{secret}@127.0.0.1:notaport/"),
        ] {
            let list = format!("amqp://guest:guest@127.0.0.1/%2f,{url}");
            let e = Brokers::parse([list.as_str()]).unwrap_err().to_string();
            assert!(e.starts_with("broker URL 2 is not an AMQP URL"), "{e}");
            assert!(!e.contains("s3cr"), "{e}");
        }
        // A comma inside a password does not split the URL: it stays one,
        // and its password is found whole.
        let brokers = Brokers::parse(["amqp://u:hunter,secret@h/%2f, amqp://v:w@h2/%2f"]).unwrap();
        assert_eq!(brokers.len(), 2);
        assert_eq!(brokers.redacted(0), "amqp://u:***@h/%2f");
        assert_eq!(brokers.scrub("hunter,secret"), "***");
        // Still malformed for another reason: no piece of it is shown.
        let e = Brokers::parse(["amqp://u:hunter,secret@h:port/%2f"])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("broker URL 1 is not an AMQP URL"), "{e}");
        assert!(!e.contains("hunter") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn scrub_replaces_passwords_as_written_and_decoded() {
        let brokers =
            Brokers::parse(["amqp://me:pa%24%24word@h/%2f,amqp://me:other@h2/v"]).unwrap();
        let said = "vhost 'x' for pa$$word and pa%24%24word and other not found";
        assert_eq!(
            brokers.scrub(said),
            "vhost 'x' for *** and *** and *** not found"
        );
        assert_eq!(brokers.redacted(0), "amqp://me:***@h/%2f");
        assert_eq!(
            format!("{brokers:?}"),
            "amqp://me:***@h/%2f,amqp://me:***@h2/v"
        );
    }

    #[test]
    fn a_url_without_a_password_is_shown_as_is() {
        let brokers = Brokers::parse(["amqp://h/%2f"]).unwrap();
        assert_eq!(brokers.redacted(0), "amqp://h/%2f");
        assert_eq!(brokers.scrub("amqp://h/%2f"), "amqp://h/%2f");
    }
}
