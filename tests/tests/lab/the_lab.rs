//! The lab itself: pods wired by the real CNI plugins reach each other across
//! nodes, and teardown leaves the host exactly as it found it, also when
//! bringing a lab up fails half-way.

use weft_tests::{Dataplane, Lab, LabSpec, host::HostSnapshot, lab, netns, privileged, process};

#[test]
fn two_nodes_two_pods_all_pairs_ping_and_down_leaves_nothing() {
    let _guard = privileged!("two_nodes_two_pods_all_pairs_ping_and_down_leaves_nothing");
    let before = HostSnapshot::take().unwrap();
    let mut spec = LabSpec::new("t-lab-pairs", 2, 2);
    spec.dataplane = Dataplane::Kernel;
    let lab = Lab::up(&spec).unwrap();

    // The contract's names and addresses.
    let namespaces = netns::list().unwrap();
    for ns in [
        "t-lab-pairs-ul",
        "t-lab-pairs-n1",
        "t-lab-pairs-n2",
        "t-lab-pairs-n1-p1",
        "t-lab-pairs-n2-p2",
    ] {
        assert!(
            namespaces.contains(&ns.to_owned()),
            "{ns} missing from {namespaces:?}"
        );
    }
    let eth0 =
        netns::run_host(&["ip", "-n", "t-lab-pairs-n2", "-br", "addr", "show", "eth0"]).unwrap();
    assert!(eth0.contains("192.168.77.2/24"), "{eth0}");
    // Pods are wired from the subnet.env each node's agent wrote: cni0 is
    // the subnet's gateway and every pod address lies inside the subnet.
    for node in &lab.state.nodes {
        let subnet: ipnet::Ipv4Net = node.subnet.parse().unwrap();
        let gateway = format!("{}/{}", subnet.hosts().next().unwrap(), subnet.prefix_len());
        let cni0 = netns::run_host(&["ip", "-n", &node.ns, "-br", "addr", "show", "cni0"]).unwrap();
        assert!(cni0.contains(&gateway), "{cni0} lacks {gateway}");
        for pod in &node.pods {
            let ip: std::net::Ipv4Addr = pod.ip().parse().unwrap();
            assert!(subnet.contains(&ip), "{ip} outside {subnet}");
        }
    }
    assert_eq!(lab.pods().count(), 4);
    lab.assert_all_pairs_ping(3);

    // Every process the lab started (the agents, etcd), by the pid files
    // teardown stops them by.
    let processes: Vec<(u32, String)> = std::fs::read_dir(lab::run_dir("t-lab-pairs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "pid"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let (pid, program) = text.trim().split_once(' ').unwrap();
            (pid.parse().unwrap(), program.to_owned())
        })
        .collect();
    assert!(
        processes.len() >= 3
            && processes
                .iter()
                .any(|(_, program)| program.ends_with("etcd")),
        "two agents and etcd at least: {processes:?}"
    );
    for (pid, program) in &processes {
        assert!(
            process::is_running(*pid, program),
            "{program} ({pid}) is not running"
        );
    }

    drop(lab);
    for (pid, program) in &processes {
        assert!(
            !process::is_running(*pid, program),
            "{program} ({pid}) still runs after teardown"
        );
    }
    assert_eq!(
        HostSnapshot::take().unwrap(),
        before,
        "lab down left something behind"
    );
    assert!(!lab::run_dir("t-lab-pairs").exists());
}

#[test]
fn a_failed_up_removes_what_it_created() {
    let _guard = privileged!("a_failed_up_removes_what_it_created");
    let before = HostSnapshot::take().unwrap();
    let mut spec = LabSpec::new("t-lab-fail", 2, 1);
    spec.weft_bin = "/nonexistent/weft".into();
    let error = format!(
        "{:#}",
        Lab::up(&spec)
            .err()
            .expect("up must fail without an agent binary")
    );
    assert!(
        error.contains("/nonexistent/weft does not exist"),
        "{error}"
    );
    assert_eq!(
        HostSnapshot::take().unwrap(),
        before,
        "a failed up left something behind"
    );
}

#[test]
fn a_second_lab_with_the_same_name_is_refused() {
    let _guard = privileged!("a_second_lab_with_the_same_name_is_refused");
    let mut spec = LabSpec::new("t-lab-dup", 1, 0);
    spec.dataplane = Dataplane::Kernel;
    let first = Lab::up(&spec).unwrap();
    let error = format!(
        "{:#}",
        Lab::up(&spec)
            .err()
            .expect("a duplicate lab must be refused")
    );
    assert!(
        error.contains("a lab named t-lab-dup already exists"),
        "{error}"
    );
    // The refused duplicate must not have torn the first one down.
    assert!(netns::list().unwrap().contains(&"t-lab-dup-n1".to_owned()));
    drop(first);
}
