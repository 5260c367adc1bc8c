//! The `cid` input source: fetching UnixFS content out of IPFS CAR files,
//! trusting nothing but the CID.
//!
//! `gateway.rs` is the source itself: it asks trustless HTTP gateways for a
//! CARv1, streams it to a scratch file, caches it, and says which failure is
//! whose. The formats (CIDs, CARv1 with every block verified, dag-pb/UnixFS
//! unpacking) are in the `shoal-ipfs` crate.

mod gateway;

pub(super) use gateway::Gateways;
pub(super) use shoal_ipfs::{Kind, Limits, Unpacked};
