//! Two operator replicas never lead at once: the Lease goes to one, is renewed by it, refused to
//! the other until it expires, then taken over.

mod common;

use std::time::Duration;

use common::{FakeApi, NS};
use coupon_operator::lease::LeaseLock;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;

#[tokio::test]
async fn one_leader_at_a_time() {
    let fake = FakeApi::default();
    let api: Api<Lease> = Api::namespaced(fake.client(), NS);
    let a = LeaseLock::new(
        api.clone(),
        "coupon-operator",
        "pod-a",
        Duration::from_secs(15),
    );
    let b = LeaseLock::new(
        api.clone(),
        "coupon-operator",
        "pod-b",
        Duration::from_secs(15),
    );
    let t0 = Timestamp::from_second(1_800_000_000).expect("time");
    assert!(
        a.try_acquire_or_renew(t0).await.expect("a"),
        "a takes the free lease"
    );
    assert!(
        !b.try_acquire_or_renew(t0).await.expect("b"),
        "b is refused while a holds it"
    );
    let t1 = t0 + SignedDuration::from_secs(10);
    assert!(a.try_acquire_or_renew(t1).await.expect("a renews"));
    assert!(
        !b.try_acquire_or_renew(t1 + SignedDuration::from_secs(10))
            .await
            .expect("b"),
        "renewed: not expired yet"
    );
    // a stops renewing; after the lease duration b takes over and a cannot come back.
    let t2 = t1 + SignedDuration::from_secs(16);
    assert!(b.try_acquire_or_renew(t2).await.expect("b takes over"));
    assert!(
        !a.try_acquire_or_renew(t2).await.expect("a"),
        "a lost the lease"
    );
    let lease = fake.get(&format!(
        "/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/coupon-operator"
    ));
    assert_eq!(lease["spec"]["holderIdentity"], "pod-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
}
