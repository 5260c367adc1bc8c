//! Address blocks, as `staging.url_allow` lists them.
use std::net::IpAddr;

/// An address block that does not parse: the operator's configuration is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error("{block:?} is not an address or ADDRESS/PREFIX")]
    Address {
        /// The block as written.
        block: String,
        /// Why the address did not parse.
        #[source]
        source: std::net::AddrParseError,
    },
    /// The prefix is not a number from 0 to the address's bit length.
    #[error("{block:?}: the prefix must be 0 to {max}")]
    Prefix {
        /// The block as written.
        block: String,
        /// 32 for IPv4, 128 for IPv6.
        max: u8,
    },
}

/// An address block, `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX` or a bare address (a block of one).
    pub(crate) fn parse(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|source| CidrError::Address {
            block: s.to_owned(),
            source,
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| CidrError::Prefix {
                    block: s.to_owned(),
                    max,
                })?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is in the block.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Parses `staging.url_allow`: address blocks separated by commas.
pub(crate) fn parse_allow_list(s: &str) -> Result<Vec<Cidr>, CidrError> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(Cidr::parse)
        .collect()
}
