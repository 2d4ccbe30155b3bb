//! The namespace guard: creates isolated hosts on 198.18.0.0/15 and leaves
//! nothing behind, even for processes still running inside.

use bootfleet_test_support::netns::{Netns, link};

fn namespaces() -> String {
    String::from_utf8_lossy(
        &std::process::Command::new("ip").args(["netns", "list"]).output().unwrap().stdout,
    )
    .into_owned()
}

#[test]
fn namespaces_are_linked_isolated_and_cleaned_up() {
    let mut sleeper = {
        let a = Netns::create("bftA").unwrap();
        let b = Netns::create("bftB").unwrap();
        link(&a, "198.18.200.1/24", &b, "198.18.200.2/24").unwrap();
        // Reachable across the veth pair…
        a.run("ping", &["-c", "1", "-W", "2", "198.18.200.2"]).unwrap();
        // …and nothing else: only lo and the veth end exist inside.
        let links = a.run("ip", &["-o", "link"]).unwrap();
        assert_eq!(links.lines().count(), 2, "{links}");
        // A process left running inside is killed by the guard.
        let sleeper = b.spawn("sleep", &["600"]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(link(&a, "10.0.0.1/24", &b, "10.0.0.2/24").is_err(), "only 198.18.0.0/15 is allowed");
        sleeper
    };
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "the process inside must have been killed: {status}");
    let left = namespaces();
    assert!(!left.contains("bftA") && !left.contains("bftB"), "left behind: {left}");
    // A leftover of the same name is replaced, not an error.
    let first = Netns::create("bftC").unwrap();
    std::mem::forget(first);
    let second = Netns::create("bftC").unwrap();
    drop(second);
    assert!(!namespaces().contains("bftC"));
}
