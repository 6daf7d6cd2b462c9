use super::*;

fn inject(input: &str) -> anyhow::Result<(String, Vec<String>)> {
    let labels = HashMap::from([("istio-injection".to_string(), "enabled".to_string())]);
    inject_documents(&table::embedded_default(), input, None, Some(&labels))
}

fn proxies(v: &Value) -> usize {
    v["spec"]["containers"].as_array().map_or(0, |cs| {
        cs.iter().filter(|c| c["name"] == "istio-proxy").count()
    })
}

const DEPLOY: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: web, image: nginx}]\n";

#[test]
fn deployment_is_injected_and_other_kinds_pass_through() {
    let (out, notes) = inject(&format!(
        "{DEPLOY}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata: {{a: 'on'}}\n"
    ))
    .expect("inject");
    let docs: Vec<Value> = yaml::documents(&out).map(|d| d.expect("yaml")).collect();
    assert_eq!(proxies(&docs[0]["spec"]["template"]), 1, "{out}");
    assert_eq!(docs[1]["data"]["a"], "on");
    assert!(
        notes.iter().any(|n| n.contains("injected revision")),
        "{notes:?}"
    );
}

#[test]
fn list_items_are_injected_like_documents() {
    let input = format!(
        "apiVersion: v1\nkind: List\nitems:\n- {{apiVersion: v1, kind: Service, metadata: {{name: s}}}}\n- {}\n- apiVersion: v1\n  kind: List\n  items: [{}]\n",
        serde_json::to_string(&yaml::from_str(DEPLOY).expect("yaml")).expect("json"),
        serde_json::to_string(
            &yaml::from_str(&DEPLOY.replace(
                "apps/v1\nkind: Deployment",
                "apps.openshift.io/v1\nkind: DeploymentConfig"
            ))
            .expect("yaml")
        )
        .expect("json"),
    );
    let (out, notes) = inject(&input).expect("inject");
    let list = yaml::from_str(&out).expect("yaml");
    assert_eq!(list["items"][0]["kind"], "Service");
    assert_eq!(proxies(&list["items"][1]["spec"]["template"]), 1, "{out}");
    assert_eq!(
        proxies(&list["items"][2]["items"][0]["spec"]["template"]),
        1,
        "{out}"
    );
    assert!(
        notes.iter().any(
            |n| n.contains("document 0 (List) item 2 (List) item 0 (DeploymentConfig \"web\")")
        ),
        "{notes:?}"
    );
}

#[test]
fn template_metadata_that_is_no_mapping_is_an_error_not_a_panic() {
    for meta in ["x", "[1]", "7"] {
        let input = DEPLOY.replace(
            "metadata: {labels: {app: web}}",
            &format!("metadata: {meta}"),
        );
        let e = inject(&input).expect_err("not a mapping").to_string();
        assert!(
            e.contains("document 0 (Deployment \"web\")")
                && e.contains("`spec.template.metadata` must be a mapping"),
            "{e}"
        );
    }
}

#[test]
fn malformed_shapes_name_document_object_and_field() {
    let cases: &[(&str, &str)] = &[
        ("- a\n- b\n", "document 0: not a Kubernetes object"),
        ("just text\n", "document 0: not a Kubernetes object"),
        ("kind: [a]\n", "field `kind`"),
        (
            "apiVersion: v1\nmetadata: {name: x}\n",
            "missing field `kind`",
        ),
        (
            "kind: Pod\nmetadata: [a]\n",
            "field `metadata` must be a mapping",
        ),
        (
            "kind: Pod\nmetadata: {name: {a: 1}}\n",
            "field `metadata.name` must be a string",
        ),
        (
            "kind: Pod\nmetadata: {name: p}\nspec: 3\n",
            "field `spec` must be a mapping",
        ),
        (
            "kind: Pod\nmetadata: {name: p}\nspec: {containers: [3]}\n",
            "field `spec.containers[0]` must be a mapping",
        ),
        (
            "kind: Pod\nmetadata: {name: p}\nspec: {containers: [{image: x}]}\n",
            "missing field `spec.containers[0].name`",
        ),
        (
            "kind: Pod\nmetadata: {name: p}\nspec: {containers: {}}\n",
            "spec.containers must be a list",
        ),
        (
            "kind: Pod\nmetadata: {name: p, labels: {a: 1}}\nspec: {containers: []}\n",
            "`metadata.labels.a` must be a string",
        ),
        (
            "kind: Pod\nspec: {containers: []}\n",
            "missing field `metadata.name`",
        ),
        (
            "kind: Pod\nmetadata: {}\nspec: {containers: []}\n",
            "missing field `metadata.name` (or `metadata.generateName`)",
        ),
        (
            "kind: Deployment\nmetadata: {name: d}\nspec: {template: []}\n",
            "field `spec.template` must be a mapping",
        ),
        (
            "kind: Deployment\nmetadata: {name: d}\nspec: {template: {spec: {containers: [], hostNetwork: 'yes'}}}\n",
            "`spec.template.spec.hostNetwork` must be a boolean",
        ),
        (
            "kind: CronJob\nmetadata: {name: c}\nspec: {jobTemplate: x}\n",
            "field `spec.jobTemplate` must be a mapping",
        ),
        (
            "kind: List\nitems: {a: 1}\n",
            "document 0 (List): field `items` must be a list",
        ),
        (
            "kind: List\nitems: [{kind: Pod, metadata: {name: p}, spec: 1}]\n",
            "document 0 (List) item 0 (Pod \"p\"): field `spec`",
        ),
        ("kind: A\n---\nkind: [\n", "document 1: not valid YAML"),
    ];
    for (input, want) in cases {
        let e = format!("{:#}", inject(input).expect_err(input));
        assert!(e.contains(want), "{input:?}: {e}");
    }
}

#[test]
fn pod_with_generate_name_only_is_injected() {
    let pod = include_str!("../../../tests/fixtures/pod.json");
    let (out, notes) = inject(pod).expect("a pod with generateName is a valid pod");
    let v = yaml::from_str(&out).expect("yaml");
    assert_eq!(proxies(&v), 1, "{notes:?}");
}

#[test]
fn output_quotes_yaml_1_1_lookalikes() {
    let input = DEPLOY.replace(
        "{app: web}",
        "{app: web, a: 'on', b: 'no', c: '1_000', d: '012', e: '0x1F', f: '1e3', g: '~', h: 'y'}",
    );
    let (out, _) = inject(&input).expect("inject");
    for v in ["on", "no", "1_000", "012", "0x1F", "1e3", "~", "y"] {
        assert!(out.contains(&format!(": '{v}'\n")), "{v}:\n{out}");
    }
}
