//! The tunnel link backends decapsulate on: tunl0, the ipip module's
//! fallback device. tunlb creates it when missing and brings it up; it never
//! deletes it (other software may use it, and it goes only with the module).

use super::SyncReport;
use crate::link::{LinkError, LinkInfo, Links, TUNL0};
use tunlb_api::plan::NodePlan;

/// What tunl0 needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    None,
    Create,
    SetUp(u32),
}

pub fn diff(needed: bool, found: Option<&LinkInfo>) -> Change {
    match (needed, found) {
        (false, _) => Change::None,
        (true, None) => Change::Create,
        (true, Some(l)) if !l.up => Change::SetUp(l.index),
        (true, Some(_)) => Change::None,
    }
}

async fn apply(links: &Links, needed: bool) -> Result<(), LinkError> {
    match diff(needed, links.find(TUNL0).await?.as_ref()) {
        Change::None => Ok(()),
        Change::SetUp(index) => links.set_up(index, TUNL0).await,
        Change::Create => {
            links.add_ipip(TUNL0).await?;
            let Some(link) = links.find(TUNL0).await? else {
                return Err(LinkError::IpipMissing("tunl0 did not appear".into()));
            };
            match diff(needed, Some(&link)) {
                Change::SetUp(index) => links.set_up(index, TUNL0).await,
                _ => Ok(()),
            }
        }
    }
}

/// Makes sure tunl0 exists and is up when the plan puts a VIP on it. Returns
/// false when it could not (every object is told why).
pub async fn sync(links: &Links, plan: &NodePlan, report: &mut SyncReport) -> bool {
    if !plan.needs_tunl0() {
        return true;
    }
    match apply(links, true).await {
        Ok(()) => true,
        Err(e) => {
            report.error_for(plan, |_| true, &e.to_string());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tunl0(up: bool) -> LinkInfo {
        LinkInfo {
            index: 7,
            name: TUNL0.into(),
            up,
            mtu: Some(1480),
        }
    }

    #[test]
    fn creates_brings_up_or_leaves_alone() {
        assert_eq!(diff(true, None), Change::Create);
        assert_eq!(diff(true, Some(&tunl0(false))), Change::SetUp(7));
        assert_eq!(diff(true, Some(&tunl0(true))), Change::None);
        // Not needed: never created, never taken down.
        assert_eq!(diff(false, None), Change::None);
        assert_eq!(diff(false, Some(&tunl0(true))), Change::None);
    }
}
