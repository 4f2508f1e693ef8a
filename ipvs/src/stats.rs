//! Service/destination counters (`IPVS_*_ATTR_STATS` and `*_STATS64`).

use netlink_packet_core::{
    DecodeError, DefaultNla, Nla, NlaBuffer, Parseable, parse_u32, parse_u64,
};

use crate::constants::*;
use crate::nla::{put_u32, put_u64};

/// Counters and rate estimates of a service or destination.
///
/// Filled from `STATS64` when the kernel sends it (Linux >= 4.1), otherwise
/// from the legacy `STATS` nest whose packet/connection counters are 32-bit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Stats {
    pub conns: u64,
    pub inpkts: u64,
    pub outpkts: u64,
    pub inbytes: u64,
    pub outbytes: u64,
    pub cps: u64,
    pub inpps: u64,
    pub outpps: u64,
    pub inbps: u64,
    pub outbps: u64,
}

/// One attribute of a stats nest. Its width is taken from the attribute
/// length, so the same type decodes both `STATS` (mixed u32/u64) and
/// `STATS64` (all u64). `IPVS_STATS_ATTR_PAD` and unknown kinds land in `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatsAttr {
    U32(u16, u32),
    U64(u16, u64),
    Other(DefaultNla),
}

impl From<DefaultNla> for StatsAttr {
    fn from(nla: DefaultNla) -> Self {
        StatsAttr::Other(nla)
    }
}

impl Nla for StatsAttr {
    fn value_len(&self) -> usize {
        match self {
            StatsAttr::U32(..) => 4,
            StatsAttr::U64(..) => 8,
            StatsAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            StatsAttr::U32(kind, _) | StatsAttr::U64(kind, _) => *kind,
            StatsAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            StatsAttr::U32(_, v) => put_u32(buffer, *v),
            StatsAttr::U64(_, v) => put_u64(buffer, *v),
            StatsAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&T>> for StatsAttr {
    fn parse(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        let kind = buf.kind();
        let payload = buf.value();
        let known = (IPVS_STATS_ATTR_CONNS..=IPVS_STATS_ATTR_OUTBPS).contains(&kind);
        Ok(match (known, payload.len()) {
            (true, 4) => StatsAttr::U32(kind, parse_u32(payload)?),
            (true, 8) => StatsAttr::U64(kind, parse_u64(payload)?),
            _ => StatsAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

impl Stats {
    pub(crate) fn from_attrs(attrs: &[StatsAttr]) -> Stats {
        let mut s = Stats::default();
        for attr in attrs {
            let (kind, value) = match attr {
                StatsAttr::U32(k, v) => (*k, u64::from(*v)),
                StatsAttr::U64(k, v) => (*k, *v),
                StatsAttr::Other(_) => continue,
            };
            let field = match kind {
                IPVS_STATS_ATTR_CONNS => &mut s.conns,
                IPVS_STATS_ATTR_INPKTS => &mut s.inpkts,
                IPVS_STATS_ATTR_OUTPKTS => &mut s.outpkts,
                IPVS_STATS_ATTR_INBYTES => &mut s.inbytes,
                IPVS_STATS_ATTR_OUTBYTES => &mut s.outbytes,
                IPVS_STATS_ATTR_CPS => &mut s.cps,
                IPVS_STATS_ATTR_INPPS => &mut s.inpps,
                IPVS_STATS_ATTR_OUTPPS => &mut s.outpps,
                IPVS_STATS_ATTR_INBPS => &mut s.inbps,
                IPVS_STATS_ATTR_OUTBPS => &mut s.outbps,
                _ => continue,
            };
            *field = value;
        }
        s
    }

    /// Prefer the 64-bit nest; fall back to the legacy one.
    pub(crate) fn pick(stats64: Option<&[StatsAttr]>, stats: Option<&[StatsAttr]>) -> Stats {
        match (stats64, stats) {
            (Some(attrs), _) | (None, Some(attrs)) => Stats::from_attrs(attrs),
            (None, None) => Stats::default(),
        }
    }

    /// The `STATS64` nest as the kernel writes it (used by tests and fakes).
    pub fn to_attrs64(&self) -> Vec<StatsAttr> {
        self.fields()
            .into_iter()
            .map(|(k, v)| StatsAttr::U64(k, v))
            .collect()
    }

    /// The legacy `STATS` nest as the kernel writes it: bytes are u64, the
    /// rest truncated to u32.
    pub fn to_attrs32(&self) -> Vec<StatsAttr> {
        self.fields()
            .into_iter()
            .map(|(k, v)| match k {
                IPVS_STATS_ATTR_INBYTES | IPVS_STATS_ATTR_OUTBYTES => StatsAttr::U64(k, v),
                _ => StatsAttr::U32(k, v as u32),
            })
            .collect()
    }

    fn fields(&self) -> [(u16, u64); 10] {
        [
            (IPVS_STATS_ATTR_CONNS, self.conns),
            (IPVS_STATS_ATTR_INPKTS, self.inpkts),
            (IPVS_STATS_ATTR_OUTPKTS, self.outpkts),
            (IPVS_STATS_ATTR_INBYTES, self.inbytes),
            (IPVS_STATS_ATTR_OUTBYTES, self.outbytes),
            (IPVS_STATS_ATTR_CPS, self.cps),
            (IPVS_STATS_ATTR_INPPS, self.inpps),
            (IPVS_STATS_ATTR_OUTPPS, self.outpps),
            (IPVS_STATS_ATTR_INBPS, self.inbps),
            (IPVS_STATS_ATTR_OUTBPS, self.outbps),
        ]
    }
}
