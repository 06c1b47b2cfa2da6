//! The kube subnet manager's reference behaviour: stock flanneld v0.20.2 in
//! `--kube-subnet-mgr` mode against the lab's real kube-apiserver (TLS, RBAC,
//! a ServiceAccount token with exactly kube-flannel.yml's rights). What it
//! writes on each Node is what weft's kube mode will be compared with.

// Integration tests see every dependency of their package.
#![allow(unused_crate_dependencies)]

use weft_tests::{
    Dataplane, Lab, LabSpec, SubnetManager, flannel, kube, privileged,
    privileged::{reference_flanneld, reference_kubernetes},
    process,
};

#[test]
fn stock_flanneld_in_kube_mode_annotates_its_node_and_pods_reach_each_other() {
    const TEST: &str = "stock_flanneld_in_kube_mode_annotates_its_node_and_pods_reach_each_other";
    let _guard = privileged!(TEST);
    let Some(flanneld) = reference_flanneld(TEST) else {
        return;
    };
    let Some(kubernetes) = reference_kubernetes(TEST) else {
        return;
    };
    let mut spec = LabSpec::new("t-kb-flannel", 2, 1);
    spec.dataplane = Dataplane::Flanneld;
    spec.subnet_manager = SubnetManager::Kube;
    spec.flanneld_bin = Some(flanneld);
    spec.kubernetes_bin = Some(kubernetes);
    let lab = Lab::up(&spec).unwrap();
    let api = lab.kube().unwrap();

    for node in lab.node_ids() {
        let state = lab.node(node);
        let object = api.node(state.node_name()).unwrap();
        let annotations = &object["metadata"]["annotations"];
        let annotation = |key: &str| {
            annotations[format!("flannel.alpha.coreos.com/{key}")]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no annotation {key}: {annotations}", state.ns))
                .to_owned()
        };
        assert_eq!(annotation("backend-type"), "vxlan");
        assert_eq!(
            annotation("backend-data"),
            format!(
                r#"{{"VNI":1,"VtepMAC":"{}"}}"#,
                flannel::vtep_mac(state).unwrap()
            )
        );
        assert_eq!(annotation("public-ip"), state.ip);
        assert_eq!(annotation("kube-subnet-manager"), "true");
        let conditions = object["status"]["conditions"].as_array().cloned();
        let unavailable = conditions
            .unwrap_or_default()
            .into_iter()
            .find(|condition| condition["type"] == "NetworkUnavailable")
            .unwrap_or_else(|| panic!("{}: no NetworkUnavailable condition: {object}", state.ns));
        assert_eq!(unavailable["status"], "False", "{unavailable}");
        assert_eq!(unavailable["reason"], "FlannelIsUp", "{unavailable}");

        // subnet.env from the Node's podCIDR, as flanneld writes it.
        let pod_cidr = Lab::pod_cidr(node);
        assert_eq!(object["spec"]["podCIDR"], pod_cidr.as_str());
        let env = std::fs::read_to_string(&state.subnet_file).unwrap();
        assert_eq!(
            env,
            format!(
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={}/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
                pod_cidr.replace(".0/24", ".1")
            )
        );
    }

    lab.warm_up().unwrap();
    lab.assert_all_pairs_ping(5);

    // The agents hold flanneld's rights and no more; the API server keeps
    // its objects under its own etcd prefix and flannel's etcd prefix stays
    // empty (no agent used etcd).
    assert_eq!(
        api.as_agent(&["auth", "can-i", "patch", "nodes", "--subresource=status"])
            .unwrap()
            .trim(),
        "yes"
    );
    let refused = api.as_agent(&["get", "secrets", "--all-namespaces"]);
    assert!(
        refused
            .as_ref()
            .is_err_and(|error| format!("{error:#}").contains("forbidden")),
        "the agents' token reads secrets: {refused:?}"
    );
    let refused = api.as_agent(&[
        "label",
        "node",
        lab.node(lab.node_ids().next().unwrap()).node_name(),
        "x=y",
    ]);
    assert!(
        refused
            .as_ref()
            .is_err_and(|error| format!("{error:#}").contains("forbidden")),
        "the agents' token updates nodes: {refused:?}"
    );
    let etcd = lab.etcd();
    let nodes = etcd
        .get_prefix(&format!("{}/minions/", kube::ETCD_PREFIX))
        .unwrap();
    assert_eq!(
        nodes.len(),
        2,
        "Node objects in etcd: {:?}",
        nodes.iter().map(|(key, _)| key).collect::<Vec<_>>()
    );
    assert_eq!(etcd.get_prefix("/coreos.com/network/").unwrap(), []);

    // Teardown stops the API server too.
    let pid_file = lab.state.run_dir.join("kube-apiserver.pid");
    let apiserver = process::running_pid(&pid_file).expect("kube-apiserver runs");
    let program = api.bin_dir.join("kube-apiserver").display().to_string();
    let run_dir = lab.state.run_dir.clone();
    drop(lab);
    assert!(
        !process::is_running(apiserver, &program),
        "kube-apiserver (pid {apiserver}) survived teardown"
    );
    assert!(!run_dir.exists(), "{} survived teardown", run_dir.display());
}
