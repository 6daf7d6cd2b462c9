use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};

use super::*;
use crate::adopt::cluster::{ANNOTATION_PARKED, PARK_KEY, parked, unparked};

/// Istio's conformance corpus (the same one tests/conformance.rs reads).
fn corpus(release: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/conformance/istio")
        .join(release)
        .join("templates");
    assert!(p.is_dir(), "{} must exist (Istio's corpus)", p.display());
    p
}

const TEMPLATE_FILES: [(&str, &str); 7] = [
    ("sidecar", "injection-template.yaml"),
    ("gateway", "gateway-injection-template.yaml"),
    ("grpc-simple", "grpc-simple.yaml"),
    ("grpc-agent", "grpc-agent.yaml"),
    ("waypoint", "waypoint.yaml"),
    ("kube-gateway", "kube-gateway.yaml"),
    ("agentgateway", "agentgateway.yaml"),
];

/// The `config` of 1.30.3's injector ConfigMap as Istio's chart renders it (its templates
/// are the corpus files; tests/e2e_adopt.rs renders the real one).
fn istio_config(release: &str) -> Value {
    let dir = corpus(release);
    let mut templates = serde_json::Map::new();
    for (name, file) in TEMPLATE_FILES {
        if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
            templates.insert(name.into(), Value::String(text));
        }
    }
    json!({
        "defaultTemplates": ["sidecar"],
        "policy": "enabled",
        "alwaysInjectSelector": [],
        "neverInjectSelector": [],
        "injectedAnnotations": null,
        "template": "{{ Template_Version_And_Istio_Version_Mismatched_Check_Installation }}",
        "templates": templates,
    })
}

/// The values of revision 1-30-2 as tests/istio-oracle renders them from Istio's charts.
fn rendered_values() -> Value {
    serde_json::from_str(include_str!(
        "../../tests/fixtures/istio/injector-values-1-30-2.json"
    ))
    .expect("fixture JSON")
}

fn revision(rev: &str, values: &Value, config: &Value) -> InstalledRevision {
    InstalledRevision {
        revision: rev.into(),
        namespace: "istio-system".into(),
        deployment: Some(Istiod {
            name: istiod_name(rev),
            namespace: "istio-system".into(),
            replicas: 1,
            available: 1,
        }),
        service: Some(istiod_name(rev)),
        configmap: if rev.is_empty() {
            "istio-sidecar-injector".into()
        } else {
            format!("istio-sidecar-injector-{rev}")
        },
        values: values.to_string(),
        config: config.to_string(),
        mesh: Some(format!(
            "defaultConfig:\n  discoveryAddress: {}.istio-system.svc:15012\n",
            istiod_name(rev)
        )),
    }
}

fn two_revisions() -> Installation {
    let v2 = rendered_values();
    let mut v3 = v2.clone();
    v3["revision"] = json!("1-30-3");
    v3["global"]["tag"] = json!("1.30.3");
    let cfg = istio_config("1.30.3");
    Installation {
        revisions: vec![revision("1-30-2", &v2, &cfg), revision("1-30-3", &v3, &cfg)],
        tags: vec![
            InstalledTag {
                tag: "default".into(),
                revision: "1-30-2".into(),
                webhook: "istio-revision-tag-default".into(),
            },
            InstalledTag {
                tag: "canary".into(),
                revision: "1-30-3".into(),
                webhook: "istio-revision-tag-canary".into(),
            },
        ],
        namespaces: BTreeMap::from([
            (
                "a".into(),
                BTreeMap::from([("istio-injection".into(), "enabled".into())]),
            ),
            (
                "b".into(),
                BTreeMap::from([("istio.io/rev".into(), "canary".into())]),
            ),
            (
                "c".into(),
                BTreeMap::from([("istio.io/rev".into(), "1-30-2".into())]),
            ),
            (
                "d".into(),
                BTreeMap::from([("istio-injection".into(), "disabled".into())]),
            ),
        ]),
        ..Default::default()
    }
}

#[test]
fn rendered_istio_values_adopt_without_differences() {
    let p = plan(&two_revisions());
    assert_eq!(p.differences, vec![], "{p:#?}");
    let specs: Vec<_> = p
        .revisions
        .iter()
        .map(|r| {
            (
                r.object.metadata.name.clone().unwrap_or_default(),
                r.object.spec.clone(),
            )
        })
        .collect();
    assert_eq!(specs.len(), 2);
    assert_eq!(specs[0].0, "1-30-2");
    assert_eq!(
        specs[0].1,
        crate::config::MeshRevisionSpec {
            version: "1.30.2".into(),
            control_plane: Some(crate::config::ControlPlaneRef {
                name: Some("istiod-1-30-2".into()),
                namespace: Some("istio-system".into()),
            }),
            ..Default::default()
        },
        "Istio's defaults are meshrev's defaults: nothing but the version and the istiod found"
    );
    assert_eq!(p.revisions[0].image, "docker.io/istio/proxyv2:1.30.2");
    assert_eq!(p.revisions[1].templates_of.as_deref(), Some("1.30.3"));
    let tags: Vec<_> = p
        .tags
        .iter()
        .map(|t| {
            (
                t.object.metadata.name.clone().unwrap_or_default(),
                t.object.spec.revision.clone(),
                t.action,
            )
        })
        .collect();
    assert_eq!(
        tags,
        vec![
            ("canary".into(), "1-30-3".into(), Action::Create),
            ("default".into(), "1-30-2".into(), Action::Create),
            ("stable".into(), "1-30-2".into(), Action::Create),
        ]
    );
    let routes: Vec<_> = p
        .namespaces
        .iter()
        .map(|n| (n.name.as_str(), n.istio.as_deref(), n.meshrev.as_deref()))
        .collect();
    assert_eq!(
        routes,
        vec![
            ("a", Some("1-30-2"), Some("1-30-2")),
            ("b", Some("1-30-3"), Some("1-30-3")),
            ("c", Some("1-30-2"), Some("1-30-2")),
            ("d", None, None),
        ]
    );
    assert_eq!(p.writes(), 5);
}

#[test]
fn a_second_plan_over_the_adopted_objects_writes_nothing() {
    let mut inst = two_revisions();
    let first = plan(&inst);
    inst.existing_revisions = first.revisions.iter().map(|r| r.object.clone()).collect();
    inst.existing_tags = first.tags.iter().map(|t| t.object.clone()).collect();
    let again = plan(&inst);
    assert_eq!(again.writes(), 0);
    assert!(again.differences.is_empty());
}

#[test]
fn modelled_values_become_spec_fields() {
    let mut inst = two_revisions();
    let mut v: Value = serde_json::from_str(&inst.revisions[0].values).unwrap_or_default();
    v["global"]["hub"] = json!("registry.example.com/istio");
    v["global"]["proxy"]["logLevel"] = json!("debug");
    v["global"]["proxy"]["holdApplicationUntilProxyStarts"] = json!(true);
    v["global"]["proxy"]["resources"] =
        json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}});
    v["global"]["proxy"]["excludeIPRanges"] = json!("10.0.0.0/8");
    v["global"]["logging"]["level"] = json!("default:debug");
    inst.revisions[0].values = v.to_string();
    let p = plan(&inst);
    assert_eq!(p.differences, vec![]);
    let spec = &p.revisions[0].object.spec;
    assert_eq!(spec.hub.as_deref(), Some("registry.example.com/istio"));
    assert_eq!(spec.log_level.as_deref(), Some("debug"));
    assert_eq!(spec.hold_application_until_proxy_starts, Some(true));
    assert_eq!(spec.exclude_ip_ranges.as_deref(), Some("10.0.0.0/8"));
    assert_eq!(spec.agent_log_level.as_deref(), Some("default:debug"));
    let res = spec
        .template
        .as_ref()
        .and_then(|t| t.resources.clone())
        .unwrap_or_default();
    assert_eq!(res.requests.get("cpu").map(String::as_str), Some("50m"));
    assert_eq!(res.limits.get("memory").map(String::as_str), Some("256Mi"));
    assert_eq!(
        p.revisions[0].image,
        "registry.example.com/istio/proxyv2:1.30.2"
    );
}

#[test]
fn unmodelled_values_are_differences_named_by_path() {
    let mut inst = two_revisions();
    let mut v: Value = serde_json::from_str(&inst.revisions[1].values).unwrap_or_default();
    v["global"]["proxy"]["tracer"] = json!("zipkin");
    v["global"]["proxy"]["readinessPeriodSeconds"] = json!(5);
    v["pilot"]["env"] = json!({"ENABLE_NATIVE_SIDECARS": "false"});
    // Not part of a pod: no difference.
    v["global"]["waypoint"]["resources"] = json!({"limits": {"cpu": "4"}});
    inst.revisions[1].values = v.to_string();
    let p = plan(&inst);
    let paths: Vec<_> = p
        .differences
        .iter()
        .map(|d| (d.subject.as_str(), d.path.as_str()))
        .collect();
    assert_eq!(
        paths,
        vec![
            (
                "revision 1-30-3",
                "values.global.proxy.readinessPeriodSeconds"
            ),
            ("revision 1-30-3", "values.global.proxy.tracer"),
            ("revision 1-30-3", "values.pilot.env.ENABLE_NATIVE_SIDECARS"),
        ]
    );
    assert!(
        p.differences[1].what.contains("\"zipkin\""),
        "{:?}",
        p.differences[1]
    );
}

#[test]
fn a_custom_template_is_a_difference() {
    let mut inst = two_revisions();
    let mut cfg = istio_config("1.30.3");
    let sidecar = cfg["templates"]["sidecar"]
        .as_str()
        .unwrap_or_default()
        .replace(
            "- name: istio-proxy",
            "- name: istio-proxy\n    # our addition\n",
        );
    assert_ne!(sidecar, cfg["templates"]["sidecar"]);
    cfg["templates"]["sidecar"] = json!(sidecar);
    cfg["templates"]["company-sidecar"] = json!("spec:\n  containers: []\n");
    cfg["neverInjectSelector"] = json!([{"matchLabels": {"no": "mesh"}}]);
    inst.revisions[0].config = cfg.to_string();
    let p = plan(&inst);
    let paths: Vec<_> = p.differences.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "config.neverInjectSelector",
            "config.templates.company-sidecar",
            "config.templates.sidecar",
        ],
        "{p:#?}"
    );
    assert!(p.differences[2].what.contains("custom template"));
}

#[test]
fn templates_of_another_minor_than_the_proxy_are_a_difference() {
    let mut inst = two_revisions();
    inst.revisions[0].config = istio_config("1.29.6").to_string();
    let p = plan(&inst);
    assert_eq!(p.revisions[0].templates_of.as_deref(), Some("1.29.6"));
    assert_eq!(p.differences.len(), 1, "{p:#?}");
    assert_eq!(p.differences[0].path, "config.templates.sidecar");
}

#[test]
fn a_revisionless_install_is_revision_default_behind_stable() {
    let mut v = rendered_values();
    v["revision"] = json!("");
    let inst = Installation {
        revisions: vec![revision("", &v, &istio_config("1.30.3"))],
        namespaces: BTreeMap::from([
            (
                "a".into(),
                BTreeMap::from([("istio-injection".into(), "enabled".into())]),
            ),
            (
                "b".into(),
                BTreeMap::from([("istio.io/rev".into(), "default".into())]),
            ),
        ]),
        ..Default::default()
    };
    let p = plan(&inst);
    assert_eq!(p.differences, vec![]);
    assert_eq!(
        p.revisions[0].object.metadata.name.as_deref(),
        Some("default")
    );
    assert_eq!(
        p.revisions[0].object.spec.discovery_address.as_deref(),
        Some("istiod.istio-system.svc:15012"),
        "Istio's revisionless istiod is istiod, not istiod-default"
    );
    assert_eq!(
        p.revisions[0].object.spec.control_plane,
        Some(crate::config::ControlPlaneRef {
            name: Some("istiod".into()),
            namespace: Some("istio-system".into()),
        }),
        "and so is its Deployment"
    );
    assert_eq!(p.tags.len(), 1);
    assert_eq!(p.tags[0].object.metadata.name.as_deref(), Some("stable"));
    assert!(
        p.namespaces
            .iter()
            .all(|n| n.meshrev.as_deref() == Some("default"))
    );
}

#[test]
fn without_a_deployment_the_control_plane_is_istios_name_for_it() {
    let mut inst = two_revisions();
    inst.revisions[1].deployment = None;
    inst.revisions[1].namespace = "istio-canary".into();
    let p = plan(&inst);
    assert_eq!(
        p.revisions[1].object.spec.control_plane,
        Some(crate::config::ControlPlaneRef {
            name: Some("istiod-1-30-3".into()),
            namespace: Some("istio-canary".into()),
        }),
        "the controller then reports it NotFound, not an error"
    );
}

#[test]
fn an_existing_tag_pointing_elsewhere_is_a_difference() {
    let mut inst = two_revisions();
    inst.existing_tags = vec![RevisionTag::new(
        "stable",
        RevisionTagSpec {
            revision: "1-30-3".into(),
        },
    )];
    let p = plan(&inst);
    assert_eq!(p.differences.len(), 1);
    assert_eq!(p.differences[0].path, "RevisionTag stable");
    assert!(p.tags.iter().any(|t| t.action == Action::Overwrite));
}

#[test]
fn the_known_template_fingerprints_are_the_corpus_files() {
    let mut n = 0;
    for (release, name, hash) in KNOWN_TEMPLATES {
        let file = TEMPLATE_FILES
            .iter()
            .find(|(t, _)| t == name)
            .map(|(_, f)| *f)
            .unwrap_or_default();
        let text = std::fs::read_to_string(corpus(release).join(file)).unwrap_or_default();
        assert_eq!(fnv1a(text.trim_end().as_bytes()), *hash, "{release} {name}");
        assert_eq!(known_template(name, &text, release), Some(*release));
        n += 1;
    }
    assert!(
        n >= 9 * 4,
        "every release's sidecar, gateway and grpc templates: {n}"
    );
}

#[test]
fn parking_matches_nothing_and_unparking_restores_exactly() {
    let m: k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration =
        serde_json::from_value(json!({
            "metadata": {"name": "istio-revision-tag-default"},
            "webhooks": [
                {"name": "rev.namespace.sidecar-injector.istio.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                 "clientConfig": {"url": "https://127.0.0.1:1/inject"},
                 "namespaceSelector": {"matchExpressions": [{"key": "istio.io/rev", "operator": "In", "values": ["default"]}]}},
                {"name": "object.sidecar-injector.istio.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                 "clientConfig": {"url": "https://127.0.0.1:1/inject"}}
            ]
        }))
        .unwrap_or_default();
    let p = parked(&m).unwrap_or_default();
    assert!(parked(&p).is_none(), "parking twice is a no-op");
    for w in p.webhooks.iter().flatten() {
        let exprs = w
            .namespace_selector
            .as_ref()
            .and_then(|s| s.match_expressions.clone())
            .unwrap_or_default();
        let ops: Vec<_> = exprs
            .iter()
            .filter(|e| e.key == PARK_KEY)
            .map(|e| e.operator.as_str())
            .collect();
        assert_eq!(
            ops,
            ["Exists", "DoesNotExist"],
            "no namespace can match both"
        );
    }
    assert!(
        p.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(ANNOTATION_PARKED))
    );
    let u = unparked(&p).ok().flatten().unwrap_or_default();
    assert_eq!(u, m, "restored exactly, annotation removed");
    assert!(unparked(&m).ok().flatten().is_none());
}

#[test]
fn the_guard_is_added_once_and_removed_without_a_trace() {
    let m: k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration =
        serde_json::from_value(json!({
            "metadata": {"name": "meshrev-sidecar-injector"},
            "webhooks": [
                {"name": "namespace.injection.meshrev.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                 "clientConfig": {"url": "https://127.0.0.1:1/inject"}},
                {"name": "object.rev.meshrev.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                 "clientConfig": {"url": "https://127.0.0.1:1/inject"},
                 "matchConditions": [{"name": "other", "expression": "true"}]}
            ]
        }))
        .unwrap_or_default();
    let g = crate::adopt::cluster::with_guard(&m, true).unwrap_or_default();
    assert!(
        crate::adopt::cluster::with_guard(&g, true).is_none(),
        "added once"
    );
    for w in g.webhooks.iter().flatten() {
        let conds = w.match_conditions.clone().unwrap_or_default();
        let guard = conds
            .iter()
            .find(|c| c.name == crate::adopt::cluster::GUARD_CONDITION);
        assert!(
            guard.is_some_and(|c| c.expression.contains("'sidecar.istio.io/status' in")),
            "{conds:?}"
        );
    }
    let back = crate::adopt::cluster::with_guard(&g, false).unwrap_or_default();
    assert_eq!(back, m, "other conditions kept, no empty list left behind");
}
