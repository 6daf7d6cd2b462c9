//! When is a rolling restart complete? The rules of `kubectl rollout status`
//! (k8s.io/kubectl/pkg/polymorphichelpers/rollout_status.go), as pure functions.
//!
//! A Deployment is complete when the controller has observed the restart
//! (`status.observedGeneration >= metadata.generation`), every desired replica is updated
//! (`updatedReplicas >= spec.replicas`), no old replica is left (`status.replicas <=
//! updatedReplicas`) and the updated ones are available (`availableReplicas >=
//! updatedReplicas`). It has failed when its `Progressing` condition says
//! `ProgressDeadlineExceeded`.
//!
//! "Available" needs a kubelet that reports pods ready: meshrev waits for what a real
//! cluster shows. The end-to-end test has no kubelet and stands in for it by patching the
//! status of the pods the controller-manager creates (phase Running, condition Ready).

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};

/// Where a rollout stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    Done,
    /// Still rolling: why (for the progress display).
    Waiting(String),
    /// Will not complete by itself.
    Failed(String),
}

pub(crate) fn deployment(d: &Deployment) -> Progress {
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(status) = &d.status else {
        return Progress::Waiting("waiting for the controller to observe the restart".into());
    };
    if status.observed_generation.unwrap_or(0) < generation {
        return Progress::Waiting("waiting for the controller to observe the restart".into());
    }
    if let Some(c) = status
        .conditions
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Progressing"))
        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    {
        return Progress::Failed(format!(
            "exceeded its progress deadline: {}",
            c.message.as_deref().unwrap_or("no progress")
        ));
    }
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < want {
        return Progress::Waiting(format!("{updated} of {want} replicas updated"));
    }
    if total > updated {
        return Progress::Waiting(format!(
            "{} old replica(s) pending termination",
            total - updated
        ));
    }
    if available < updated {
        return Progress::Waiting(format!(
            "{available} of {updated} updated replicas available"
        ));
    }
    Progress::Done
}

pub(crate) fn statefulset(s: &StatefulSet) -> Progress {
    let spec = s.spec.as_ref();
    if spec
        .and_then(|sp| sp.update_strategy.as_ref())
        .and_then(|u| u.type_.as_deref())
        == Some("OnDelete")
    {
        return Progress::Failed(
            "updateStrategy is OnDelete: a restart does not replace its pods; delete them by hand"
                .into(),
        );
    }
    let Some(status) = &s.status else {
        return Progress::Waiting("waiting for the controller to observe the restart".into());
    };
    let generation = s.metadata.generation.unwrap_or(0);
    let observed = status.observed_generation.unwrap_or(0);
    if observed == 0 || observed < generation {
        return Progress::Waiting("waiting for the controller to observe the restart".into());
    }
    let want = spec.and_then(|sp| sp.replicas).unwrap_or(1);
    let ready = status.ready_replicas.unwrap_or(0);
    if ready < want {
        return Progress::Waiting(format!("{ready} of {want} pods ready"));
    }
    let partition = spec
        .and_then(|sp| sp.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    if partition > 0 {
        let want_updated = want - partition;
        let updated = status.updated_replicas.unwrap_or(0);
        if updated < want_updated {
            return Progress::Waiting(format!(
                "{updated} of {want_updated} pods above the partition updated"
            ));
        }
        return Progress::Done;
    }
    if status.update_revision.is_some() && status.update_revision != status.current_revision {
        let updated = status.updated_replicas.unwrap_or(0);
        return Progress::Waiting(format!("{updated} of {want} pods at the new revision"));
    }
    Progress::Done
}

pub(crate) fn daemonset(d: &DaemonSet) -> Progress {
    if d.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.type_.as_deref())
        == Some("OnDelete")
    {
        return Progress::Failed(
            "updateStrategy is OnDelete: a restart does not replace its pods; delete them by hand"
                .into(),
        );
    }
    let Some(status) = &d.status else {
        return Progress::Waiting("waiting for the controller to observe the restart".into());
    };
    if status.observed_generation.unwrap_or(0) < d.metadata.generation.unwrap_or(0) {
        return Progress::Waiting("waiting for the controller to observe the restart".into());
    }
    let want = status.desired_number_scheduled;
    let updated = status.updated_number_scheduled.unwrap_or(0);
    if updated < want {
        return Progress::Waiting(format!("{updated} of {want} pods updated"));
    }
    let available = status.number_available.unwrap_or(0);
    if available < want {
        return Progress::Waiting(format!("{available} of {want} updated pods available"));
    }
    Progress::Done
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy(v: serde_json::Value) -> Deployment {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn deployment_rules() {
        let d = |gen_, obs, upd, total, avail| {
            deploy(json!({
                "metadata": {"name": "d", "generation": gen_},
                "spec": {"replicas": 2, "selector": {}, "template": {}},
                "status": {"observedGeneration": obs, "updatedReplicas": upd, "replicas": total,
                           "availableReplicas": avail}
            }))
        };
        assert!(
            matches!(deployment(&d(3, 2, 2, 2, 2)), Progress::Waiting(m) if m.contains("observe"))
        );
        assert!(
            matches!(deployment(&d(3, 3, 1, 3, 2)), Progress::Waiting(m) if m.contains("1 of 2 replicas updated"))
        );
        assert!(matches!(deployment(&d(3, 3, 2, 3, 2)), Progress::Waiting(m) if m.contains("old")));
        assert!(
            matches!(deployment(&d(3, 3, 2, 2, 1)), Progress::Waiting(m) if m.contains("available"))
        );
        assert_eq!(deployment(&d(3, 3, 2, 2, 2)), Progress::Done);
        let stuck = deploy(json!({
            "metadata": {"name": "d", "generation": 1},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "conditions": [{"type": "Progressing", "status": "False",
                "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet has timed out progressing."}]}
        }));
        assert!(matches!(deployment(&stuck), Progress::Failed(_)));
    }

    #[test]
    fn statefulset_and_daemonset_rules() {
        let s: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "s", "generation": 2},
            "spec": {"replicas": 2, "selector": {}, "serviceName": "s", "template": {}},
            "status": {"observedGeneration": 2, "replicas": 2, "readyReplicas": 2, "updatedReplicas": 1,
                       "currentRevision": "a", "updateRevision": "b"}
        }))
        .unwrap();
        assert!(matches!(statefulset(&s), Progress::Waiting(_)));
        let mut done = s.clone();
        done.status.as_mut().unwrap().current_revision = Some("b".into());
        assert_eq!(statefulset(&done), Progress::Done);
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "d", "generation": 1},
            "spec": {"selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "currentNumberScheduled": 3,
                       "numberMisscheduled": 0, "numberReady": 3, "updatedNumberScheduled": 3, "numberAvailable": 2}
        }))
        .unwrap();
        assert!(matches!(daemonset(&ds), Progress::Waiting(m) if m.contains("2 of 3")));
    }
}
