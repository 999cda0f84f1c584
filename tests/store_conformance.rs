//! One conformance suite for the store interfaces, run against every implementation:
//! `CatalogStore` and `ActivationStore` on SQLite and PostgreSQL; `LeaseStore` on the embedded
//! SQL store (SQLite and PostgreSQL) and on Redis.

use crate::common::*;
use licensing_domain::change::LicenseChange;
use licensing_domain::clock::{system_clock, Clock, SystemClock};
use licensing_domain::error::StoreError;
use licensing_domain::fingerprint::ComponentDigest;
use licensing_domain::ids;
use licensing_domain::model::*;
use licensing_domain::seat_policy::*;
use licensing_domain::store::*;
use licensing_store::{RedisLeaseStore, SqlLeaseStore, SqlStore};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// The suite checks answers, not latency: it shares the machine with every other test of the
/// binary (servers under load among them), so a call waits for a pooled connection longer than a
/// service would before answering UNAVAILABLE.
fn conformance_sql_options() -> licensing_store::sql::SqlOptions {
    licensing_store::sql::SqlOptions { acquire_timeout: Duration::from_secs(30), ..Default::default() }
}

async fn sql_stores() -> Vec<(&'static str, SqlStore)> {
    let dir = tempfile::tempdir().unwrap().keep();
    let mut v = vec![("sqlite", SqlStore::open_sqlite(&dir.join("conformance.db")).await.unwrap())];
    if postgres_available().await {
        v.push((
            "postgres",
            SqlStore::connect_postgres(&fresh_postgres_database().await, &conformance_sql_options()).await.unwrap(),
        ));
    }
    v
}

fn audit(action: &str, subject: &str) -> AuditRecord {
    AuditRecord::new("test", action, subject)
}

async fn seed(store: &SqlStore) -> (Customer, License) {
    store.create_product(&suite_product(), audit("product.created", "suite")).await.unwrap();
    let customer = Customer {
        customer_id: ids::new_id(ids::CUSTOMER),
        company_name: "Acme".into(),
        contact_email: "a@b.example".into(),
        contact_name: String::new(),
        phone: String::new(),
        created_at: 1,
    };
    store
        .create_customer(&customer, Some("$argon2id$stub"), audit("customer.created", &customer.customer_id))
        .await
        .unwrap();
    let l = new_license(&customer.customer_id, LicenseKind::NodeLocked, 2);
    let new = NewLicense {
        license: l.clone(),
        key_digest: format!("digest-{}", l.license_id),
        activation_password_salt: "salt".into(),
    };
    store.insert_license(&new, audit("license.issued", &l.license_id), None).await.unwrap();
    (customer, l)
}

#[tokio::test]
async fn catalog_store_conformance() {
    for (name, store) in sql_stores().await {
        let (customer, l) = seed(&store).await;
        assert_eq!(store.get_product("suite").await.unwrap().unwrap(), suite_product(), "{name}");
        assert!(
            matches!(
                store.create_product(&suite_product(), audit("x", "suite")).await,
                Err(StoreError::AlreadyExists(_))
            ),
            "{name}"
        );
        let p = store
            .add_product_version("suite", ProductVersion { version: "1.0".into(), released_at: 5 }, audit("v", "suite"))
            .await
            .unwrap();
        assert_eq!(p.versions.len(), 1);
        assert!(matches!(
            store
                .add_product_version(
                    "suite",
                    ProductVersion { version: "1.0".into(), released_at: 6 },
                    audit("v", "suite")
                )
                .await,
            Err(StoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            store
                .add_product_version(
                    "nope",
                    ProductVersion { version: "1.0".into(), released_at: 6 },
                    audit("v", "nope")
                )
                .await,
            Err(StoreError::NotFound(_))
        ));

        assert_eq!(store.get_customer(&customer.customer_id).await.unwrap().unwrap(), customer);
        assert_eq!(
            store.find_customer_by_email("A@B.example").await.unwrap().unwrap(),
            customer,
            "{name}: emails match case-insensitively"
        );
        let dup = Customer { customer_id: ids::new_id(ids::CUSTOMER), ..customer.clone() };
        assert!(
            matches!(store.create_customer(&dup, None, audit("x", "y")).await, Err(StoreError::AlreadyExists(_))),
            "{name}"
        );
        assert_eq!(
            store.customer_password_hash(&customer.customer_id).await.unwrap().as_deref(),
            Some("$argon2id$stub")
        );
        assert_eq!(store.list_customers(Some("acm"), &Page::default()).await.unwrap().len(), 1);

        assert_eq!(store.get_license(&l.license_id).await.unwrap().unwrap(), l, "{name}");
        assert_eq!(store.find_license_by_key_digest(&format!("digest-{}", l.license_id)).await.unwrap().unwrap(), l);
        assert!(store.find_license_by_key_digest("other").await.unwrap().is_none());
        let by_text = store
            .list_licenses(&LicenseFilter { text: Some("FIRST".into()), ..Default::default() }, &Page::default())
            .await
            .unwrap();
        assert_eq!(by_text.len(), 1, "{name}: text search is case-insensitive");
        let none = store
            .list_licenses(
                &LicenseFilter { status: Some(LicenseStatus::Suspended), ..Default::default() },
                &Page::default(),
            )
            .await
            .unwrap();
        assert!(none.is_empty());

        // A change is applied under the row lock with its audit entry; a rejected one changes nothing.
        let changed = store
            .update_license(
                &l.license_id,
                &LicenseChange::SetSeats(5),
                10,
                audit("license.seats_changed", &l.license_id),
                None,
            )
            .await
            .unwrap();
        assert_eq!((changed.seats, changed.updated_at), (5, 10));
        let rejected = store
            .update_license(
                &l.license_id,
                &LicenseChange::AddModules(vec!["zzz".into()]),
                11,
                audit("x", &l.license_id),
                None,
            )
            .await;
        assert!(matches!(rejected, Err(UpdateError::Rejected(_))), "{name}");
        assert!(matches!(
            store.update_license("lic_0000000000000000", &LicenseChange::Suspend, 1, audit("x", "y"), None).await,
            Err(UpdateError::Store(StoreError::NotFound(_)))
        ));
        let events = store.list_audit(&l.license_id, &Page::default()).await.unwrap();
        assert_eq!(
            events.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
            ["license.issued", "license.seats_changed"],
            "{name}"
        );
        let after_first = store
            .list_audit(&l.license_id, &Page { after: Some(events[0].sequence.to_string()), limit: 10 })
            .await
            .unwrap();
        assert_eq!(after_first.len(), 1);

        assert_eq!(store.activation_password_salt(&l.license_id).await.unwrap().as_deref(), Some("salt"));
        store
            .set_activation_password_salt(&l.license_id, "salt2", audit("license.password_regenerated", &l.license_id))
            .await
            .unwrap();
        assert_eq!(store.activation_password_salt(&l.license_id).await.unwrap().as_deref(), Some("salt2"));

        assert_eq!(store.count_admin_tokens().await.unwrap(), 0);
        store.insert_admin_token("t1", "d1", 1).await.unwrap();
        store.insert_admin_token("t2", "d1", 1).await.unwrap();
        assert_eq!(store.count_admin_tokens().await.unwrap(), 1, "{name}: idempotent by digest");
        assert_eq!(store.find_admin_token("d1").await.unwrap().as_deref(), Some("t1"));
    }
}

fn digests(machine: &str) -> Vec<ComponentDigest> {
    ["machine-id", "disk-serial", "mac", "hostname"]
        .iter()
        .map(|n| ComponentDigest { name: n.to_string(), digest: format!("{machine}-{n}") })
        .collect()
}

fn activate_command(license_id: &str, machine: &str) -> ActivateCommand {
    ActivateCommand {
        license_id: license_id.into(),
        installation_id: ids::new_id(ids::INSTALLATION),
        fingerprint: digests(machine),
        fingerprint_summary: machine.into(),
        machine_name: machine.into(),
        platform: "p".into(),
        product_version: "1.0".into(),
        offline: false,
        server: false,
        match_threshold: 0.6,
        now: 100,
    }
}

/// A module added to an existing product is kept with the product's others (modules added at
/// once all stay; one code never twice), and a license's module entitlements round-trip:
/// stored at issue, changed under the row lock, a refused change storing nothing.
#[tokio::test]
async fn product_modules_and_module_entitlements_conform_in_every_sql_store() {
    for (name, store) in sql_stores().await {
        let (_, l) = seed(&store).await;
        let module = |code: &str| Module { code: code.into(), name: code.to_uppercase() };
        let p = store.add_product_module("suite", module("c"), audit("product.module_added", "suite")).await.unwrap();
        assert_eq!(p.modules.iter().map(|m| m.code.as_str()).collect::<Vec<_>>(), ["a", "b", "c"], "{name}");
        assert_eq!(store.get_product("suite").await.unwrap().unwrap(), p, "{name}: stored");
        match store.add_product_module("suite", module("c"), audit("x", "suite")).await {
            Err(StoreError::AlreadyExists(what)) => assert!(what.contains("'c'"), "{name}: names the module: {what}"),
            other => panic!("{name}: {other:?}"),
        }
        assert!(
            matches!(
                store.add_product_module("nope", module("d"), audit("x", "nope")).await,
                Err(StoreError::NotFound(_))
            ),
            "{name}"
        );
        let mut adds = tokio::task::JoinSet::new();
        for i in 0..6 {
            let store = store.clone();
            adds.spawn(async move {
                store
                    .add_product_module("suite", module(&format!("m{i}")), audit("product.module_added", "suite"))
                    .await
            });
        }
        while let Some(added) = adds.join_next().await {
            added.unwrap().unwrap();
        }
        assert_eq!(store.get_product("suite").await.unwrap().unwrap().modules.len(), 9, "{name}: none lost");
        let audited = store.list_audit("suite", &Page::default()).await.unwrap();
        assert_eq!(audited.iter().filter(|e| e.action == "product.module_added").count(), 7, "{name}");

        // Issued with entitlements: stored and read back as they were.
        let mut entitled = new_license(&l.customer_id, LicenseKind::NodeLocked, 1);
        entitled.modules = vec!["a".into(), "c".into()];
        entitled.module_entitlements = [
            ("a".to_owned(), ModuleEntitlement { value: Some("4096".into()), expires_at: Some(i64::MAX / 4) }),
            ("c".to_owned(), ModuleEntitlement { value: Some("ünïcode ✓".into()), expires_at: None }),
        ]
        .into();
        let new = NewLicense {
            license: entitled.clone(),
            key_digest: format!("digest-{}", entitled.license_id),
            activation_password_salt: "salt".into(),
        };
        store.insert_license(&new, audit("license.issued", &entitled.license_id), None).await.unwrap();
        assert_eq!(store.get_license(&entitled.license_id).await.unwrap().unwrap(), entitled, "{name}");

        // Changed under the row lock; a refused change (a control character) stores nothing.
        let set = |module: &str, value: &str, expires_at| LicenseChange::SetModuleEntitlement {
            module: module.into(),
            value: Some(value.into()),
            expires_at,
        };
        let now = SystemClock.now();
        let changed = store
            .update_license(&l.license_id, &set("a", "8", Some(now + 60_000)), now, audit("e", &l.license_id), None)
            .await
            .unwrap();
        let stored = store.get_license(&l.license_id).await.unwrap().unwrap();
        assert_eq!(stored, changed, "{name}");
        assert_eq!(
            stored.module_entitlements["a"],
            ModuleEntitlement { value: Some("8".into()), expires_at: Some(now + 60_000) }
        );
        let refused =
            store.update_license(&l.license_id, &set("a", "x\0y", None), now, audit("e", &l.license_id), None).await;
        assert!(matches!(refused, Err(UpdateError::Rejected(_))), "{name}: {refused:?}");
        assert_eq!(store.get_license(&l.license_id).await.unwrap().unwrap(), stored, "{name}: unchanged");
        let cleared = LicenseChange::SetModuleEntitlement { module: "a".into(), value: None, expires_at: None };
        store.update_license(&l.license_id, &cleared, now, audit("e", &l.license_id), None).await.unwrap();
        assert!(store.get_license(&l.license_id).await.unwrap().unwrap().module_entitlements.is_empty(), "{name}");
    }
}

#[tokio::test]
async fn activation_store_conformance() {
    let usable = |_: &License| Ok(());
    for (name, store) in sql_stores().await {
        let (_, l) = seed(&store).await;
        let first = store.activate(&activate_command(&l.license_id, "m1"), &usable).await.unwrap();
        assert!(matches!(first, ActivateOutcome::New(_, ref after) if after.activations_used == 1), "{name}");
        let again = store.activate(&activate_command(&l.license_id, "m1"), &usable).await.unwrap();
        assert!(matches!(again, ActivateOutcome::Existing(..)), "{name}");
        store.activate(&activate_command(&l.license_id, "m2"), &usable).await.unwrap();
        assert!(
            matches!(
                store.activate(&activate_command(&l.license_id, "m3"), &usable).await,
                Err(ActivationStoreError::LimitReached { seats: 2 })
            ),
            "{name}"
        );
        let refuse = |_: &License| Err(Refusal { reason: "SUSPENDED", message: "no".into() });
        assert!(matches!(
            store.activate(&activate_command(&l.license_id, "m3"), &refuse).await,
            Err(ActivationStoreError::Refused(_))
        ));

        let by_machine = DeactivateCommand {
            license_id: l.license_id.clone(),
            target: DeactivateTarget::Fingerprint { digests: digests("m1"), match_threshold: 0.6 },
            counts: true,
            action: "deactivate",
            now: 200,
        };
        let (gone, after) = store.deactivate(&by_machine).await.unwrap();
        assert_eq!(
            (gone.deactivated_at, after.activations_used, after.deactivations_used),
            (Some(200), 1, 1),
            "{name}"
        );
        assert!(matches!(store.deactivate(&by_machine).await, Err(ActivationStoreError::NoActivation)));
        // Validation reads only live activations: the deactivated m1 is history, not a candidate.
        let live = store.list_live_activations(&l.license_id).await.unwrap();
        assert_eq!(live.iter().map(|a| a.machine_name.as_str()).collect::<Vec<_>>(), ["m2"], "{name}");
        assert_eq!(store.list_activations(&l.license_id).await.unwrap().len(), 2, "{name}");
        let m2 = live.into_iter().next().unwrap();
        let by_id = DeactivateCommand {
            target: DeactivateTarget::Installation(m2.installation_id.clone()),
            ..by_machine.clone()
        };
        // The portal's and support's deactivations are refused without a history line; a
        // product's (checked) ones are recorded, whether the license or the limit refuses.
        assert!(
            matches!(store.deactivate(&by_id).await, Err(ActivationStoreError::DeactivationLimit { allowed: 1 })),
            "{name}"
        );
        assert!(
            matches!(
                store.deactivate_checked(&by_id, &usable).await,
                Err(ActivationStoreError::DeactivationLimit { allowed: 1 })
            ),
            "{name}"
        );
        assert!(matches!(store.deactivate_checked(&by_id, &refuse).await, Err(ActivationStoreError::Refused(_))));
        let uncounted = DeactivateCommand { counts: false, action: "portal_deactivate", ..by_id };
        store.deactivate(&uncounted).await.expect("a deactivation that does not count ignores the limit");
        let event = |action: &str, outcome: &str| ActivationEvent {
            sequence: 0,
            occurred_at: 300,
            action: action.into(),
            installation_id: m2.installation_id.clone(),
            machine_name: "m2".into(),
            fingerprint_digest: "x".into(),
            outcome: outcome.into(),
        };
        store.record_refresh(&m2.installation_id, &event("refresh", "ok"), 300).await.unwrap();
        store.record_refusal(&l.license_id, &event("activate", "WRONG_ACTIVATION_PASSWORD")).await.unwrap();
        let history = store.list_activation_events(&l.license_id).await.unwrap();
        let lines: Vec<(&str, &str)> = history.iter().map(|e| (e.action.as_str(), e.outcome.as_str())).collect();
        assert_eq!(
            lines,
            [
                ("activate", "ok"),
                ("activate", "ok: already activated"),
                ("activate", "ok"),
                ("activate", "ACTIVATION_LIMIT_REACHED"),
                ("activate", "SUSPENDED"),
                ("deactivate", "ok"),
                ("deactivate", "DEACTIVATION_LIMIT_REACHED"),
                ("deactivate", "SUSPENDED"),
                ("portal_deactivate", "ok: not counted"),
                ("refresh", "ok"),
                ("activate", "WRONG_ACTIVATION_PASSWORD"),
            ],
            "{name}"
        );
        let limited = &history[6];
        assert_eq!(
            (limited.installation_id.as_str(), limited.machine_name.as_str()),
            (m2.installation_id.as_str(), "m2")
        );
        let l_after = store.get_license(&l.license_id).await.unwrap().unwrap();
        assert_eq!((l_after.activations_used, l_after.deactivations_used), (0, 1), "{name}: refusals took nothing");

        // Pages of history, newest first, each starting before the last one's sequence.
        let mut paged = vec![];
        let mut before = None;
        loop {
            let page = store.page_activation_events(&l.license_id, before, 4).await.unwrap();
            paged.extend(page.iter().cloned());
            match page.last() {
                Some(last) if page.len() == 4 => before = Some(last.sequence),
                _ => break,
            }
        }
        let mut newest_first = history.clone();
        newest_first.reverse();
        assert_eq!(paged, newest_first, "{name}");
    }
}

/// A server license's activations: racing (re-)activations of one server each get their own
/// serial (no two files share one), a second server beyond the seats is refused, and the
/// return of a server's file frees its activation only when it names the latest serial, with
/// its audit record; a refused return changes nothing.
#[tokio::test]
async fn server_license_serials_only_grow_and_only_the_latest_file_returns_in_every_sql_store() {
    let usable = |_: &License| Ok(());
    for (name, store) in sql_stores().await {
        let (customer, _) = seed(&store).await;
        let l = License {
            kind: LicenseKind::Server,
            server_grants: vec![licensing_domain::server_license::ServerGrant {
                product_code: "suite".into(),
                feature: String::new(),
                floating_seats: 5,
                node_locked_activations: 0,
            }],
            ..new_license(&customer.customer_id, LicenseKind::Server, 1)
        };
        insert(&store, &l).await;
        assert_eq!(store.get_license(&l.license_id).await.unwrap().unwrap().server_grants, l.server_grants, "{name}");
        let server = |machine: &str| ActivateCommand { server: true, ..activate_command(&l.license_id, machine) };
        let mut racing = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (store, command) = (store.clone(), server("srv-1"));
            racing.spawn(async move { store.activate(&command, &|_: &License| Ok(())).await });
        }
        let mut serials = vec![];
        let mut installations = HashSet::new();
        while let Some(outcome) = racing.join_next().await {
            let (ActivateOutcome::New(a, _) | ActivateOutcome::Existing(a, _)) = outcome.unwrap().unwrap();
            serials.push(a.server_serial);
            installations.insert(a.installation_id);
        }
        serials.sort_unstable();
        assert_eq!(serials, (1..=8).collect::<Vec<i64>>(), "{name}: each file its own serial");
        assert_eq!(installations.len(), 1, "{name}: one server, one activation");
        let installation_id = installations.into_iter().next().unwrap();
        assert!(
            matches!(
                store.activate(&server("srv-2"), &usable).await,
                Err(ActivationStoreError::LimitReached { seats: 1 })
            ),
            "{name}"
        );
        // An activation that signs no file leaves the serial as it is.
        store.activate(&activate_command(&l.license_id, "srv-1"), &usable).await.unwrap();
        assert_eq!(store.get_activation(&installation_id).await.unwrap().unwrap().server_serial, 8, "{name}");
        assert_eq!(
            store.activate(&server("srv-1"), &usable).await.map(|o| match o {
                ActivateOutcome::New(a, _) | ActivateOutcome::Existing(a, _) => a.server_serial,
            }),
            Ok(9),
            "{name}"
        );

        let give_back = |serial: i64| DeactivateCommand {
            license_id: l.license_id.clone(),
            target: DeactivateTarget::ServerLicenseFile {
                installation_id: installation_id.clone(),
                serial,
                audit: audit("server_license.returned", &l.license_id),
            },
            counts: false,
            action: "server_return",
            now: 300,
        };
        match store.deactivate(&give_back(8)).await {
            Err(ActivationStoreError::Refused(r)) => assert_eq!(r.reason, "SUPERSEDED_SERVER_LICENSE", "{name}"),
            other => panic!("{name}: {other:?}"),
        }
        assert_eq!(store.get_license(&l.license_id).await.unwrap().unwrap().activations_used, 1, "{name}");
        let (returned, after) = store.deactivate(&give_back(9)).await.unwrap();
        assert_eq!((returned.deactivated_at, after.activations_used, after.deactivations_used), (Some(300), 0, 0));
        let actions: Vec<String> =
            store.list_audit(&l.license_id, &Page::default()).await.unwrap().into_iter().map(|e| e.action).collect();
        assert_eq!(actions.iter().filter(|a| *a == "server_license.returned").count(), 1, "{name}: {actions:?}");
        assert!(matches!(store.deactivate(&give_back(9)).await, Err(ActivationStoreError::NoActivation)), "{name}");
        let ActivateOutcome::New(next, _) = store.activate(&server("srv-2"), &usable).await.unwrap() else {
            panic!("{name}: another server after the return")
        };
        assert_eq!(next.server_serial, 10, "{name}: serials go on growing across servers");
    }
}

/// Server usage reports: stored once per installation and period (a retry answers the first,
/// the same period with other figures is refused), only for a live activation of the license
/// and a serial signed for it, with an audit record; listed newest first in keyset pages.
#[tokio::test]
async fn server_usage_reports_are_stored_once_per_installation_and_period_in_every_sql_store() {
    use licensing_domain::server_usage::*;
    let usable = |_: &License| Ok(());
    for (name, store) in sql_stores().await {
        let (customer, other) = seed(&store).await;
        let l = License { kind: LicenseKind::Server, ..new_license(&customer.customer_id, LicenseKind::Server, 2) };
        insert(&store, &l).await;
        let server = |machine: &str| ActivateCommand { server: true, ..activate_command(&l.license_id, machine) };
        let activated = |o: ActivateOutcome| match o {
            ActivateOutcome::New(a, _) | ActivateOutcome::Existing(a, _) => a,
        };
        store.activate(&server("srv-1"), &usable).await.unwrap();
        // Activated again: its latest file has serial 2.
        let first = activated(store.activate(&server("srv-1"), &usable).await.unwrap());
        assert_eq!(first.server_serial, 2, "{name}");
        let other_installation =
            activated(store.activate(&activate_command(&other.license_id, "ws-1"), &usable).await.unwrap());
        let grant = ServerGrantUsage {
            product_code: "suite".into(),
            feature: String::new(),
            kind: GrantKind::Floating,
            granted: 5,
            peak_in_use: 4,
            checkouts: 30,
            denials: 1,
            seat_seconds: 7200,
        };
        let report =
            |installation_id: &str, serial: i64, start: i64, grants: Vec<ServerGrantUsage>| RecordServerUsage {
                report_id: ids::new_id(ids::SERVER_USAGE_REPORT),
                license_id: l.license_id.clone(),
                usage: ServerUsage {
                    installation_id: installation_id.into(),
                    serial,
                    period_start: start,
                    period_end: start + 1000,
                    grants,
                },
                received_at: 5000 + start,
                audit: audit("server_license.usage_reported", &l.license_id),
            };
        let stored =
            store.record_server_usage(&report(&first.installation_id, 1, 0, vec![grant.clone()])).await.unwrap();
        assert!(!stored.replayed, "{name}");
        assert_eq!((stored.report.serial, stored.report.grants.clone()), (1, vec![grant.clone()]), "{name}");
        // A retry (another report ID offered) answers the first report.
        let again =
            store.record_server_usage(&report(&first.installation_id, 1, 0, vec![grant.clone()])).await.unwrap();
        assert_eq!((again.replayed, &again.report), (true, &stored.report), "{name}");
        let page = Page { after: None, limit: 10 };
        let listed = |store: SqlStore, page: Page| {
            let id = l.license_id.clone();
            async move { store.list_server_usage_reports(&id, &page).await.unwrap() }
        };
        assert_eq!(listed(store.clone(), page.clone()).await, vec![stored.report.clone()], "{name}: stored once");

        let refused = |r: Result<UsageRecorded, ServerUsageStoreError>| match r {
            Err(ServerUsageStoreError::Refused(refused)) => refused,
            other => panic!("{name}: {other:?}"),
        };
        let busier = ServerGrantUsage { peak_in_use: 5, ..grant.clone() };
        assert!(matches!(
            refused(store.record_server_usage(&report(&first.installation_id, 1, 0, vec![busier])).await),
            ServerUsageRefused::Conflict { report_id, .. } if report_id == stored.report.report_id
        ));
        assert!(matches!(
            refused(store.record_server_usage(&report(&first.installation_id, 3, 2000, vec![grant.clone()])).await),
            ServerUsageRefused::UnknownSerial { serial: 3, latest: 2, .. }
        ));
        for unknown in [other_installation.installation_id.as_str(), "ins_0000000000000000"] {
            assert!(
                matches!(
                    refused(store.record_server_usage(&report(unknown, 1, 2000, vec![grant.clone()])).await),
                    ServerUsageRefused::InstallationNotFound { .. }
                ),
                "{name}: {unknown}"
            );
        }
        let mut missing = report(&first.installation_id, 1, 2000, vec![grant.clone()]);
        missing.license_id = "lic_0000000000000000".into();
        assert!(
            matches!(store.record_server_usage(&missing).await, Err(ServerUsageStoreError::LicenseNotFound(_))),
            "{name}"
        );

        // Newer reports list first, in keyset pages.
        let second =
            store.record_server_usage(&report(&first.installation_id, 2, 2000, vec![grant.clone()])).await.unwrap();
        let third = store.record_server_usage(&report(&first.installation_id, 2, 4000, vec![])).await.unwrap();
        let newest = listed(store.clone(), Page { after: None, limit: 2 }).await;
        assert_eq!(newest, vec![third.report.clone(), second.report.clone()], "{name}");
        let older = listed(store.clone(), Page { after: Some(second.report.sequence.to_string()), limit: 2 }).await;
        assert_eq!(older, vec![stored.report.clone()], "{name}");
        let audited = store.list_audit(&l.license_id, &Page::default()).await.unwrap();
        assert_eq!(
            audited.iter().filter(|e| e.action == "server_license.usage_reported").count(),
            3,
            "{name}: one audit record per stored report, none for a retry or a refusal"
        );

        // A server given back reports no more; its reports stay, and a retry is still answered.
        store
            .deactivate(&DeactivateCommand {
                license_id: l.license_id.clone(),
                target: DeactivateTarget::Installation(first.installation_id.clone()),
                counts: false,
                action: "server_return",
                now: 9000,
            })
            .await
            .unwrap();
        assert!(matches!(
            refused(store.record_server_usage(&report(&first.installation_id, 2, 6000, vec![grant.clone()])).await),
            ServerUsageRefused::Deactivated { deactivated_at: 9000, .. }
        ));
        let retried = store.record_server_usage(&report(&first.installation_id, 2, 4000, vec![])).await.unwrap();
        assert_eq!((retried.replayed, retried.report), (true, third.report), "{name}");
        assert_eq!(listed(store.clone(), page).await.len(), 3, "{name}");
    }
}

async fn insert(store: &SqlStore, l: &License) {
    let new = NewLicense {
        license: l.clone(),
        key_digest: format!("digest-{}", l.license_id),
        activation_password_salt: "salt".into(),
    };
    store.insert_license(&new, audit("license.issued", &l.license_id), None).await.unwrap();
}

/// Machines of a license with a heartbeat timeout that were not seen within it are culled: their
/// activations freed, no deactivation spent, each with a history line and an audit record; a
/// machine that heartbeats survives, and so do the machines of a license without a timeout.
/// Two culls at once cull each machine once.
#[tokio::test]
async fn machines_silent_past_the_heartbeat_timeout_are_culled_once_without_spending_a_deactivation() {
    let usable = |_: &License| Ok(());
    for (name, store) in sql_stores().await {
        let (customer, _) = seed(&store).await;
        let l = License {
            heartbeat_timeout_ms: Some(60_000),
            ..new_license(&customer.customer_id, LicenseKind::NodeLocked, 4)
        };
        insert(&store, &l).await;
        assert_eq!(store.get_license(&l.license_id).await.unwrap().unwrap().heartbeat_timeout_ms, Some(60_000));
        let plain = new_license(&customer.customer_id, LicenseKind::NodeLocked, 1);
        insert(&store, &plain).await;
        let mut ids = HashMap::new();
        for machine in ["m1", "m2", "m3"] {
            let ActivateOutcome::New(a, _) =
                store.activate(&activate_command(&l.license_id, machine), &usable).await.unwrap()
            else {
                panic!("{name}: {machine} is new")
            };
            ids.insert(machine, a.installation_id);
        }
        store.activate(&activate_command(&plain.license_id, "p1"), &usable).await.unwrap();

        // m1 heartbeats; a heartbeat naming another license's installation changes nothing.
        let beat = store.record_heartbeat(&l.license_id, &ids["m1"], 50_000).await.unwrap().expect("m1 is live");
        assert_eq!((beat.last_seen_at, beat.deactivated_at), (50_000, None), "{name}");
        assert_eq!(store.record_heartbeat(&plain.license_id, &ids["m2"], 50_000).await.unwrap(), None, "{name}");
        assert_eq!(store.get_activation(&ids["m2"]).await.unwrap().unwrap().last_seen_at, 100, "{name}");
        // An older heartbeat arriving late does not move the sighting back.
        let late = store.record_heartbeat(&l.license_id, &ids["m1"], 40_000).await.unwrap().unwrap();
        assert_eq!(late.last_seen_at, 50_000, "{name}");

        // Seen at 100 with a 60 s timeout: still live at 60,099.
        assert!(store.cull_silent_activations(60_099, 100).await.unwrap().is_empty(), "{name}");
        // At 60,100 two culls race: m2 and m3 go, once.
        let (a, b) =
            tokio::join!(store.cull_silent_activations(60_100, 100), store.cull_silent_activations(60_100, 100));
        let mut culled: Vec<CulledActivation> = a.unwrap().into_iter().chain(b.unwrap()).collect();
        culled.sort_by(|x, y| x.activation.machine_name.cmp(&y.activation.machine_name));
        let names: Vec<&str> = culled.iter().map(|c| c.activation.machine_name.as_str()).collect();
        assert_eq!(names, ["m2", "m3"], "{name}: each silent machine culled once");
        assert!(culled.iter().all(|c| c.activation.deactivated_at == Some(60_100) && c.heartbeat_timeout_ms == 60_000));
        let after = store.get_license(&l.license_id).await.unwrap().unwrap();
        assert_eq!((after.activations_used, after.deactivations_used), (1, 0), "{name}: freed, nothing spent");
        let live = store.list_live_activations(&l.license_id).await.unwrap();
        assert_eq!(live.iter().map(|a| a.machine_name.as_str()).collect::<Vec<_>>(), ["m1"], "{name}");
        let plain_after = store.get_license(&plain.license_id).await.unwrap().unwrap();
        assert_eq!(plain_after.activations_used, 1, "{name}: a license without a timeout keeps its machines");

        // A culled machine's heartbeat changes nothing; it no longer matches; its seat is free.
        assert_eq!(store.record_heartbeat(&l.license_id, &ids["m2"], 60_200).await.unwrap(), None, "{name}");
        assert_eq!(store.get_activation(&ids["m2"]).await.unwrap().unwrap().deactivated_at, Some(60_100));
        assert!(store.best_live_match(&l.license_id, &digests("m2"), 0.6).await.unwrap().is_none(), "{name}");
        let m4 = store.activate(&activate_command(&l.license_id, "m4"), &usable).await.unwrap();
        assert!(matches!(m4, ActivateOutcome::New(_, ref l) if l.activations_used == 2), "{name}");

        let history = store.list_activation_events(&l.license_id).await.unwrap();
        let culls: Vec<&ActivationEvent> = history.iter().filter(|e| e.action == "cull").collect();
        assert_eq!(culls.len(), 2, "{name}");
        for line in &culls {
            assert!(line.outcome.starts_with("ok: no heartbeat for 60 s"), "{name}: {}", line.outcome);
            assert!([&ids["m2"], &ids["m3"]].contains(&&line.installation_id), "{name}");
        }
        let audit_log = store.list_audit(&l.license_id, &Page::default()).await.unwrap();
        let audited: Vec<&AuditEvent> = audit_log.iter().filter(|e| e.action == "activation.culled").collect();
        assert_eq!(audited.len(), 2, "{name}");
        assert!(audited.iter().all(|e| e.actor == "system" && e.details_json.contains("ins_")), "{name}");

        // m1 (seen at 50,000) goes at 110,000 unless seen again; lifting the timeout keeps it.
        let lift = LicenseChange::SetHeartbeatTimeout(None);
        store.update_license(&l.license_id, &lift, 70_000, audit(lift.action(), &l.license_id), None).await.unwrap();
        assert!(store.cull_silent_activations(1_000_000_000, 100).await.unwrap().is_empty(), "{name}");
        assert_eq!(store.get_license(&l.license_id).await.unwrap().unwrap().activations_used, 2, "{name}");
    }
}

/// A cull frees at most as many machines as it is asked to per call; the rest go in the next.
#[tokio::test]
async fn a_cull_is_bounded_per_call() {
    let usable = |_: &License| Ok(());
    for (name, store) in sql_stores().await {
        let (customer, _) = seed(&store).await;
        let l = License {
            heartbeat_timeout_ms: Some(60_000),
            ..new_license(&customer.customer_id, LicenseKind::NodeLocked, 5)
        };
        insert(&store, &l).await;
        for i in 0..5 {
            store.activate(&activate_command(&l.license_id, &format!("b{i}")), &usable).await.unwrap();
        }
        assert_eq!(store.cull_silent_activations(100_000, 2).await.unwrap().len(), 2, "{name}");
        assert_eq!(store.cull_silent_activations(100_000, 2).await.unwrap().len(), 2, "{name}");
        assert_eq!(store.cull_silent_activations(100_000, 2).await.unwrap().len(), 1, "{name}");
        assert!(store.cull_silent_activations(100_000, 2).await.unwrap().is_empty(), "{name}");
        let after = store.get_license(&l.license_id).await.unwrap().unwrap();
        assert_eq!((after.activations_used, after.deactivations_used), (0, 0), "{name}");
    }
}

/// A store matches a machine through the components it shares with live activations, and
/// finds every activation that could match, also through components that very many share.
#[tokio::test]
async fn activation_stores_match_machines_through_the_components_they_share() {
    let usable = |_: &License| Ok(());
    let component = |name: &str, digest: &str| ComponentDigest { name: name.into(), digest: digest.into() };
    for (name, store) in sql_stores().await {
        let (customer, _) = seed(&store).await;
        let mut site = new_license(&customer.customer_id, LicenseKind::NodeLocked, 1_000);
        site.allowed_deactivations = UNLIMITED;
        let new = NewLicense {
            license: site.clone(),
            key_digest: format!("digest-{}", site.license_id),
            activation_password_salt: "salt".into(),
        };
        store.insert_license(&new, audit("license.issued", &site.license_id), None).await.unwrap();
        // A site where 70 machines share a CPU model and 70 others an OS image: both components
        // are common. The one machine sharing both is listed last, so following the common
        // components only part of the way would miss it.
        let machine = |i: usize, shared: ComponentDigest| Activation {
            installation_id: ids::new_id(ids::INSTALLATION),
            license_id: site.license_id.clone(),
            fingerprint: vec![
                shared,
                component("machine-id", &format!("id-{i}")),
                component("disk-serial", &format!("disk-{i}")),
            ],
            machine_name: format!("m{i}"),
            platform: "p".into(),
            product_version: "1.0".into(),
            activated_at: 50 + i as i64,
            last_seen_at: 50,
            deactivated_at: None,
            offline: false,
            server_serial: 0,
        };
        let mut imported: Vec<Activation> = (0..70)
            .map(|i| machine(i, component("cpu", "xeon")))
            .chain((70..140).map(|i| machine(i, component("os-install-id", "golden-image"))))
            .collect();
        let both = Activation {
            installation_id: "ins_zzzzzzzzzzzzzzzz".into(),
            fingerprint: vec![
                component("cpu", "xeon"),
                component("os-install-id", "golden-image"),
                component("mac", "x"),
            ],
            ..machine(140, component("board-serial", "unused"))
        };
        imported.push(both.clone());
        let after = store.import_activations(&site.license_id, &imported).await.unwrap();
        assert_eq!(after.activations_used, 141, "{name}");

        let best = |presented: Vec<ComponentDigest>, min_share: f64| {
            let store = store.clone();
            let license_id = site.license_id.clone();
            async move { store.best_live_match(&license_id, &presented, min_share).await.unwrap() }
        };
        let seven = vec![component("cpu", "xeon"), component("machine-id", "id-7"), component("disk-serial", "disk-7")];
        let found = best(seven, 0.6).await.unwrap();
        assert_eq!(
            (found.activation.installation_id.as_str(), found.share),
            (imported[7].installation_id.as_str(), 1.0)
        );
        // A machine with the common CPU and OS and a new board: 2 of the 3 components of `both`.
        let presented =
            vec![component("cpu", "xeon"), component("os-install-id", "golden-image"), component("machine-id", "new")];
        let found = best(presented, 0.6).await.expect("found through common components alone");
        assert_eq!(found.activation.installation_id, both.installation_id, "{name}");
        // At a lower share every machine with the CPU would do: one of them is found.
        let found = best(vec![component("machine-id", "new"), component("cpu", "xeon")], 0.3).await.unwrap();
        assert!((found.share - 1.0 / 3.0).abs() < 1e-9, "{name}: {}", found.share);
        assert!(best(vec![component("machine-id", "nothing shared")], 0.3).await.is_none());

        // 70 clones of one image, 69 of them deactivated: the last still matches through the
        // components its clones shared (their counts fell with each deactivation, to 1).
        let clone = |i: usize| Activation {
            fingerprint: vec![component("cpu", "epyc"), component("os-install-id", "clone-image")],
            ..machine(200 + i, component("mac", "unused"))
        };
        let clones: Vec<Activation> = (0..70).map(clone).collect();
        store.import_activations(&site.license_id, &clones).await.unwrap();
        for gone in &clones[1..] {
            let command = DeactivateCommand {
                license_id: site.license_id.clone(),
                target: DeactivateTarget::Installation(gone.installation_id.clone()),
                counts: false,
                action: "support_return",
                now: 150,
            };
            store.deactivate(&command).await.unwrap();
        }
        let image = vec![component("cpu", "epyc"), component("os-install-id", "clone-image")];
        let found = best(image, 0.6).await.expect("the last clone");
        assert_eq!(found.activation.installation_id, clones[0].installation_id, "{name}");

        // The index follows a machine's components as they change, and forgets it when it goes.
        let first = vec![component("machine-id", "a"), component("disk-serial", "b"), component("mac", "c")];
        let moved = vec![component("machine-id", "a"), component("disk-serial", "b"), component("mac", "d")];
        let command = |fingerprint: &[ComponentDigest]| ActivateCommand {
            fingerprint: fingerprint.to_vec(),
            ..activate_command(&site.license_id, "mover")
        };
        let ActivateOutcome::New(mover, _) = store.activate(&command(&first), &usable).await.unwrap() else {
            panic!("{name}: a new machine")
        };
        assert!(matches!(store.activate(&command(&moved), &usable).await.unwrap(), ActivateOutcome::Existing(..)));
        let later = vec![component("machine-id", "a"), component("mac", "d"), component("hostname", "e")];
        let found = best(later.clone(), 0.6).await.expect("matched through the components stored last");
        assert_eq!(found.activation.installation_id, mover.installation_id);
        assert!(best(vec![component("mac", "c")], 0.3).await.is_none(), "{name}: the old NIC is forgotten");
        let by_machine = DeactivateCommand {
            license_id: site.license_id.clone(),
            target: DeactivateTarget::Fingerprint { digests: later.clone(), match_threshold: 0.6 },
            counts: true,
            action: "deactivate",
            now: 200,
        };
        let (gone, _) = store.deactivate(&by_machine).await.unwrap();
        assert_eq!(gone.installation_id, mover.installation_id);
        assert!(best(later, 0.3).await.is_none(), "{name}: a deactivated machine matches nothing");

        // Installations page newest first, ties in activation time included.
        let tied = Activation { activated_at: 149, ..machine(99, component("cpu", "tied")) };
        store.import_activations(&site.license_id, std::slice::from_ref(&tied)).await.unwrap();
        let mut paged: Vec<String> = vec![];
        let mut after: Option<InstallationCursor> = None;
        loop {
            let page = store.page_activations(&site.license_id, after.as_ref(), 7).await.unwrap();
            paged.extend(page.iter().map(|a| a.installation_id.clone()));
            match page.last() {
                Some(last) if page.len() == 7 => after = Some(InstallationCursor::after(last)),
                _ => break,
            }
        }
        let all: Vec<String> =
            store.list_activations(&site.license_id).await.unwrap().into_iter().map(|a| a.installation_id).collect();
        assert_eq!(paged.len(), all.len(), "{name}");
        assert_eq!(paged.iter().collect::<HashSet<_>>(), all.iter().collect::<HashSet<_>>(), "{name}");
    }
}

/// Activations made before the component index existed are indexed by its migration: the same
/// machine still matches and takes no second activation.
#[tokio::test]
async fn activations_made_before_the_component_index_still_match_after_its_migration() {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap().keep();
    let mut databases = vec![("sqlite", format!("sqlite://{}", dir.join("before.db").display()))];
    if postgres_available().await {
        databases.push(("postgres", fresh_postgres_database().await));
    }
    let usable = |_: &License| Ok(());
    for (name, url) in databases {
        let open = || async {
            if name == "sqlite" {
                SqlStore::open_sqlite(&dir.join("before.db")).await.unwrap()
            } else {
                SqlStore::connect_postgres(&url, &conformance_sql_options()).await.unwrap()
            }
        };
        let store = open().await;
        let (_, l) = seed(&store).await;
        store.activate(&activate_command(&l.license_id, "m1"), &usable).await.unwrap();
        store.close().await;
        // Back to the schema before the index: no index, its migration not applied.
        let raw = sqlx::AnyPool::connect(&url).await.unwrap();
        for sql in [
            "DROP TABLE activation_component_counts",
            "DROP TABLE activation_components",
            "DROP INDEX activations_license_newest",
            "DELETE FROM _sqlx_migrations WHERE version = 7",
        ] {
            sqlx::query(sql).execute(&raw).await.unwrap();
        }
        raw.close().await;
        let store = open().await;
        let found = store.best_live_match(&l.license_id, &digests("m1"), 0.6).await.unwrap();
        assert_eq!(found.map(|m| m.activation.machine_name), Some("m1".to_owned()), "{name}");
        let again = store.activate(&activate_command(&l.license_id, "m1"), &usable).await.unwrap();
        assert!(matches!(again, ActivateOutcome::Existing(..)), "{name}");
        assert_eq!(store.get_license(&l.license_id).await.unwrap().unwrap().activations_used, 1, "{name}");
        store.close().await;
    }
}

#[tokio::test]
async fn usage_store_conformance() {
    for (name, store) in sql_stores().await {
        let (_, l) = seed(&store).await;
        // More events than one INSERT carries, so batches are split and must keep their order.
        let events: Vec<UsageEvent> = (0..150)
            .map(|i| UsageEvent {
                license_id: l.license_id.clone(),
                occurred_at: 1_000 + i / 3,
                kind: [UsageKind::Checkout, UsageKind::Checkin, UsageKind::Denied][i as usize % 3],
                lease_id: format!("lse_{i}"),
                group_id: format!("grp_{}", i / 2),
                user: format!("user {i}"),
                host: "host".into(),
                feature: if i % 2 == 0 { "cad".into() } else { String::new() },
                seats_delta: (i % 3) as i32 - 1,
                overdraft: i % 5 == 0,
                borrowed: i % 7 == 0,
                reason: if i % 3 == 2 { "FULL".into() } else { String::new() },
                count: 1 + i % 4,
            })
            .collect();
        store.append_usage(&events[..1]).await.unwrap();
        store.append_usage(&events[1..]).await.unwrap();
        store.append_usage(&[]).await.unwrap();
        let read = store.usage_events(&l.license_id, 10_000).await.unwrap();
        assert_eq!(read, events, "{name}: every event back, in order");
        let before = store.usage_events(&l.license_id, 1_010).await.unwrap();
        assert_eq!(before, events[..30], "{name}: only events before `until`");
    }
}

/// Every lease store, Redis on its default database.
async fn lease_stores() -> Vec<(&'static str, Arc<dyn LeaseStore>)> {
    lease_stores_on_redis_db(None).await
}

/// Every lease store, Redis on database `redis_db` when given: a test that sweeps needs a
/// database of its own, as the sweep drains every expired lease it finds, including those
/// another test running at the same time expects to see in its own sweep.
async fn lease_stores_on_redis_db(redis_db: Option<u8>) -> Vec<(&'static str, Arc<dyn LeaseStore>)> {
    let mut v: Vec<(&'static str, Arc<dyn LeaseStore>)> = vec![];
    for (name, sql) in sql_stores().await {
        let label = if name == "sqlite" { "embedded (sqlite)" } else { "embedded (postgres)" };
        v.push((label, Arc::new(SqlLeaseStore::new(sql, system_clock()))));
    }
    if redis_available().await {
        let url = redis_db.map_or_else(redis_url, redis_url_on_db);
        let redis = RedisLeaseStore::connect(&url).await.unwrap();
        redis.open_epoch(false).await.unwrap();
        v.push(("redis", Arc::new(redis)));
    }
    v
}

fn checkout(license_id: &str, client: &str, seats: i32, ttl_ms: i64) -> CheckoutCommand {
    CheckoutCommand {
        license_id: license_id.into(),
        seats,
        lease_id: ids::new_id(ids::LEASE),
        client_instance_id: client.into(),
        user: "u".into(),
        host: "h".into(),
        feature: String::new(),
        ttl_ms,
        cost: 1,
        limits: SeatLimits::default(),
        queue_blocked: false,
        share_key: None,
        max_processes: 0,
        borrowed: false,
        license_revision: None,
        not_after: None,
    }
}

#[tokio::test]
async fn lease_store_conformance() {
    for (name, store) in lease_stores_on_redis_db(Some(1)).await {
        let license = ids::new_id(ids::LICENSE);
        let granted = |o: CheckoutOutcome| match o {
            CheckoutOutcome::Granted { lease, renewed, in_use, .. } => (lease, renewed, in_use),
            full => panic!("{name}: expected a grant, got {full:?}"),
        };
        let (a, renewed, in_use) = granted(store.checkout(&checkout(&license, "a", 2, 10_000)).await.unwrap());
        assert_eq!((renewed, in_use), (false, 1), "{name}");
        let (again, renewed, in_use) = granted(store.checkout(&checkout(&license, "a", 2, 10_000)).await.unwrap());
        assert_eq!(
            (again.lease_id.as_str(), renewed, in_use),
            (a.lease_id.as_str(), true, 1),
            "{name}: same client renews"
        );
        let (b, _, _) = granted(store.checkout(&checkout(&license, "b", 2, 10_000)).await.unwrap());
        assert!(b.fence > a.fence, "{name}: fences grow");
        match store.checkout(&checkout(&license, "c", 2, 10_000)).await.unwrap() {
            CheckoutOutcome::Denied { denial: SeatDenial::Full, in_use, earliest_expiry } => {
                assert_eq!((in_use, earliest_expiry.is_some()), (2, true), "{name}")
            }
            other => panic!("{name}: {other:?}"),
        }
        assert!(
            matches!(store.heartbeat(&license, &a.lease_id, None).await.unwrap(), HeartbeatOutcome::Extended(ref l) if l.expires_at >= a.expires_at)
        );
        assert_eq!(store.heartbeat(&license, "lse_NONE000000000000", None).await.unwrap(), HeartbeatOutcome::Unknown);
        assert_eq!(
            store.heartbeat(&ids::new_id(ids::LICENSE), &a.lease_id, None).await.unwrap(),
            HeartbeatOutcome::Unknown,
            "{name}: another license's lease"
        );
        let (fence, released) = store.revoke(&license, &b.lease_id).await.unwrap().expect("revoked");
        assert!(fence > b.fence);
        assert_eq!((released.lease.lease_id.as_str(), released.seats_freed), (b.lease_id.as_str(), 1), "{name}");
        assert_eq!(store.heartbeat(&license, &b.lease_id, None).await.unwrap(), HeartbeatOutcome::Revoked, "{name}");
        assert_eq!(store.revoke(&license, &b.lease_id).await.unwrap(), None);
        assert_eq!(store.checkin(&license, &a.lease_id, 0).await.unwrap().map(|r| r.seats_freed), Some(1));
        assert!(store.checkin(&license, &a.lease_id, 0).await.unwrap().is_none(), "{name}: idempotent");
        assert!(store.list(&license).await.unwrap().is_empty(), "{name}");

        // Expiry: judged by the store's clock, freeing the seat with no sweep, then recorded by the sweep.
        let (short, _, _) = granted(store.checkout(&checkout(&license, "short", 1, 300)).await.unwrap());
        assert!(matches!(
            store.checkout(&checkout(&license, "x", 1, 300)).await.unwrap(),
            CheckoutOutcome::Denied { .. }
        ));
        tokio::time::sleep(Duration::from_millis(450)).await;
        let heartbeat = store.heartbeat(&license, &short.lease_id, None).await.unwrap();
        assert!(matches!(heartbeat, HeartbeatOutcome::Expired | HeartbeatOutcome::Unknown), "{name}: {heartbeat:?}");
        let (x, _, in_use) = granted(store.checkout(&checkout(&license, "x", 1, 10_000)).await.unwrap());
        assert_eq!(in_use, 1, "{name}: the expired lease no longer counts");
        let swept = store.sweep_expired(100).await.unwrap();
        assert!(
            swept.iter().any(|r| r.lease.lease_id == short.lease_id && r.seats_freed == 1),
            "{name}: the sweep records the expiry"
        );
        assert_eq!(
            store.list(&license).await.unwrap().iter().map(|l| l.lease_id.clone()).collect::<Vec<_>>(),
            vec![x.lease_id.clone()]
        );
        // A lease kept alive past its first expiry, then abandoned, is still recorded when it
        // finally expires (heartbeats leave the sweep's index behind; the sweep catches up).
        let (kept, _, _) = granted(store.checkout(&checkout(&license, "kept", 2, 400)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(matches!(
            store.heartbeat(&license, &kept.lease_id, None).await.unwrap(),
            HeartbeatOutcome::Extended(_)
        ));
        tokio::time::sleep(Duration::from_millis(250)).await;
        let early = store.sweep_expired(100).await.unwrap();
        assert!(!early.iter().any(|r| r.lease.lease_id == kept.lease_id), "{name}: a heartbeated lease is live");
        tokio::time::sleep(Duration::from_millis(350)).await;
        let late = store.sweep_expired(100).await.unwrap();
        assert!(late.iter().any(|r| r.lease.lease_id == kept.lease_id), "{name}: recorded once it expired");

        let now = store.now().await.unwrap();
        assert!((now - SystemClock.now()).abs() < 5_000, "{name}: the store's clock is sane");
    }
}

#[tokio::test]
async fn a_checkout_on_an_older_license_revision_is_refused_and_changes_nothing() {
    let fenced = |license: &str, client: &str, revision: u64| CheckoutCommand {
        license_revision: Some(revision),
        not_after: None,
        ..checkout(license, client, 5, 10_000)
    };
    if redis_available().await {
        let redis = RedisLeaseStore::connect(&redis_url()).await.unwrap();
        redis.open_epoch(false).await.unwrap();
        let license = ids::new_id(ids::LICENSE);
        assert_eq!(redis.current(&license).await.unwrap(), 0, "a license never changed is at 0");
        assert!(matches!(redis.checkout(&fenced(&license, "a", 0)).await.unwrap(), CheckoutOutcome::Granted { .. }));
        redis.raise(&license).await.unwrap();
        assert_eq!(redis.current(&license).await.unwrap(), 1);
        assert_eq!(redis.checkout(&fenced(&license, "b", 0)).await.unwrap(), CheckoutOutcome::StaleLicense);
        assert_eq!(
            redis.checkout(&fenced(&license, "a", 0)).await.unwrap(),
            CheckoutOutcome::StaleLicense,
            "not even the holder's own renewal"
        );
        assert_eq!(redis.list(&license).await.unwrap().len(), 1, "the refused checkouts changed nothing");
        assert!(matches!(redis.checkout(&fenced(&license, "b", 1)).await.unwrap(), CheckoutOutcome::Granted { .. }));
        assert!(matches!(
            redis.checkout(&checkout(&license, "c", 5, 10_000)).await.unwrap(),
            CheckoutOutcome::Granted { .. }
        ));
        assert_eq!(redis.current(&ids::new_id(ids::LICENSE)).await.unwrap(), 0, "revisions are per license");
    }
    // The SQL store keeps no revisions: it cannot vouch for a cached license, so it refuses them all.
    for (name, sql) in sql_stores().await {
        let store = SqlLeaseStore::new(sql, system_clock());
        let license = ids::new_id(ids::LICENSE);
        assert_eq!(store.checkout(&fenced(&license, "a", 0)).await.unwrap(), CheckoutOutcome::StaleLicense, "{name}");
        assert!(store.list(&license).await.unwrap().is_empty(), "{name}");
        assert!(matches!(
            store.checkout(&checkout(&license, "a", 5, 10_000)).await.unwrap(),
            CheckoutOutcome::Granted { .. }
        ));
    }
}

/// A checkout sends its sweep-index entry in the script's round trip, at a guessed expiry no
/// later than the lease's; after `SCRIPT FLUSH` (the script unknown to Redis) it loads the script
/// and indexes the grant in calls of its own.
#[tokio::test]
async fn redis_checkouts_index_their_license_for_the_sweep_also_after_a_script_flush() {
    if !redis_available().await {
        return;
    }
    let redis = RedisLeaseStore::connect(&redis_url()).await.unwrap();
    redis.open_epoch(false).await.unwrap();
    let mut raw = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    for flush_first in [false, true] {
        if flush_first {
            let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut raw).await.unwrap();
        }
        let license = ids::new_id(ids::LICENSE);
        let lease = match redis.checkout(&checkout(&license, "a", 1, 60_000)).await.unwrap() {
            CheckoutOutcome::Granted { lease, .. } => lease,
            other => panic!("flush first {flush_first}: {other:?}"),
        };
        let indexed: Option<i64> =
            redis::cmd("ZSCORE").arg("leases:sweep").arg(&license).query_async(&mut raw).await.unwrap();
        let indexed = indexed.unwrap_or_else(|| panic!("flush first {flush_first}: the license is indexed"));
        assert!(
            indexed <= lease.expires_at && indexed > lease.expires_at - 5_000,
            "flush first {flush_first}: indexed at {indexed}, the lease expires at {}",
            lease.expires_at
        );
        assert!(redis.checkin(&license, &lease.lease_id, 0).await.unwrap().is_some());
    }
}

/// Heartbeats and checkins that arrive together (the SQL store applies each kind in one
/// statement) each get their own answer: a lease under its own license is extended or freed, the
/// same lease named under another license is unknown, and so is a lingering one.
#[tokio::test]
async fn concurrent_heartbeats_and_checkins_each_get_their_own_answer_in_every_lease_store() {
    for (name, store) in lease_stores().await {
        let licenses: Vec<String> = (0..4).map(|_| ids::new_id(ids::LICENSE)).collect();
        let mut leases = vec![];
        for (i, license) in licenses.iter().enumerate() {
            for c in 0..8 {
                match store.checkout(&checkout(license, &format!("c{i}-{c}"), 8, 10_000)).await.unwrap() {
                    CheckoutOutcome::Granted { lease, .. } => leases.push(lease),
                    other => panic!("{name}: {other:?}"),
                }
            }
        }
        let lingering = leases.pop().unwrap();
        assert!(store.checkin(&lingering.license_id, &lingering.lease_id, 10_000).await.unwrap().is_some());
        let mut calls = tokio::task::JoinSet::new();
        for (i, lease) in leases.iter().cloned().chain([lingering.clone()]).enumerate() {
            let other_license = licenses.iter().find(|l| **l != lease.license_id).unwrap().clone();
            for (license, own) in [(lease.license_id.clone(), true), (other_license, false)] {
                let (store, lease) = (store.clone(), lease.clone());
                let own = own && i < leases.len();
                calls
                    .spawn(async move { (own, lease.clone(), store.heartbeat(&license, &lease.lease_id, None).await) });
            }
        }
        let mut extended = 0;
        while let Some(answer) = calls.join_next().await {
            let (own, lease, outcome) = answer.unwrap();
            match outcome.unwrap() {
                HeartbeatOutcome::Extended(l) if own => {
                    assert_eq!(
                        (l.lease_id.as_str(), l.license_id.as_str()),
                        (lease.lease_id.as_str(), lease.license_id.as_str()),
                        "{name}"
                    );
                    assert!(l.expires_at >= lease.expires_at, "{name}");
                    extended += 1;
                }
                HeartbeatOutcome::Unknown if !own => {}
                other => panic!("{name}: own {own}, lease {}: {other:?}", lease.lease_id),
            }
        }
        assert_eq!(extended, leases.len(), "{name}");

        // Checkins together (one statement in the SQL store): each frees its own seat once.
        let mut calls = tokio::task::JoinSet::new();
        for lease in leases.iter().cloned() {
            let other_license = licenses.iter().find(|l| **l != lease.license_id).unwrap().clone();
            for (license, own) in [(lease.license_id.clone(), true), (other_license, false)] {
                let (store, lease) = (store.clone(), lease.clone());
                calls.spawn(async move { (own, lease.clone(), store.checkin(&license, &lease.lease_id, 0).await) });
            }
        }
        let mut freed = 0;
        while let Some(answer) = calls.join_next().await {
            let (own, lease, released) = answer.unwrap();
            match released.unwrap() {
                Some(r) if own => {
                    assert_eq!((r.lease.lease_id.as_str(), r.seats_freed), (lease.lease_id.as_str(), 1), "{name}");
                    freed += 1;
                }
                None if !own => {}
                other => panic!("{name}: own {own}, lease {}: {other:?}", lease.lease_id),
            }
        }
        assert_eq!(freed, leases.len(), "{name}");
        for license in &licenses {
            let left: Vec<String> = store.list(license).await.unwrap().into_iter().map(|l| l.lease_id).collect();
            let expected = if *license == lingering.license_id { vec![lingering.lease_id.clone()] } else { vec![] };
            assert_eq!(left, expected, "{name}: only the lingering lease is left");
        }
    }
}

/// Checkouts that arrive together (the SQL store decides them in one transaction) each get
/// their own answer, as if decided one after another: over several licenses at once, a pool's
/// new seats report in-use counts 1, 2, 3… with distinct fences, a client that asks twice holds
/// one lease (the second answer renews the first), and processes sharing a seat join it up to
/// its limit of processes.
#[tokio::test]
async fn checkouts_that_arrive_together_are_decided_one_after_another_in_every_lease_store() {
    for (name, store) in lease_stores().await {
        let plain: Vec<String> = (0..3).map(|_| ids::new_id(ids::LICENSE)).collect();
        let shared = ids::new_id(ids::LICENSE);
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..2 {
            for license in &plain {
                for client in 0..4 {
                    let (store, license) = (store.clone(), license.clone());
                    calls.spawn(async move {
                        let answer = store.checkout(&checkout(&license, &format!("c{client}"), 5, 10_000)).await;
                        (license, client, answer)
                    });
                }
            }
            for process in 0..5 {
                let store = store.clone();
                let mut command = checkout(&shared, &format!("p{process}"), 2, 10_000);
                (command.share_key, command.max_processes) = (Some("job".into()), 2);
                calls.spawn(async move { (command.license_id.clone(), process, store.checkout(&command).await) });
            }
        }
        /// A granted checkout: by which client or process, and what it was told.
        #[derive(Debug)]
        struct Grant {
            client: usize,
            lease: Lease,
            renewed: bool,
            in_use: i32,
            seats_taken: i32,
        }
        let mut grants: HashMap<String, Vec<Grant>> = HashMap::new();
        let mut denied = 0;
        while let Some(answer) = calls.join_next().await {
            let (license, client, outcome) = answer.unwrap();
            match outcome.unwrap() {
                CheckoutOutcome::Granted { lease, renewed, in_use, seats_taken } => {
                    grants.entry(license).or_default().push(Grant { client, lease, renewed, in_use, seats_taken })
                }
                CheckoutOutcome::Denied { denial, in_use, .. } if license == shared => {
                    assert_eq!((denial, in_use), (SeatDenial::Full, 2), "{name}");
                    denied += 1;
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        for license in &plain {
            let answers = &grants[license];
            assert_eq!(answers.len(), 8, "{name}: every call on a pool with room is granted");
            let mut new: Vec<_> = answers.iter().filter(|a| !a.renewed).collect();
            new.sort_by_key(|a| a.in_use);
            let counts: Vec<i32> = new.iter().map(|a| a.in_use).collect();
            assert_eq!(counts, [1, 2, 3, 4], "{name}: each new seat sees the ones granted before it");
            let fences: HashSet<i64> = new.iter().map(|a| a.lease.fence).collect();
            assert_eq!(fences.len(), 4, "{name}: distinct fences");
            for answer in answers {
                let first = new.iter().find(|a| a.client == answer.client).unwrap();
                assert_eq!(answer.lease.lease_id, first.lease.lease_id, "{name}: c{} holds one lease", answer.client);
                assert_eq!(answer.seats_taken, if answer.renewed { 0 } else { 1 }, "{name}");
            }
            assert_eq!(store.list(license).await.unwrap().len(), 4, "{name}");
        }
        // Two seats of two processes each hold four of the five processes; the fifth is refused
        // both times (it never held a lease to renew).
        let on_seats = &grants[&shared];
        let opened = on_seats.iter().filter(|a| a.seats_taken == 1).count();
        let joined = on_seats.iter().filter(|a| a.seats_taken == 0 && !a.renewed).count();
        assert_eq!((on_seats.len(), opened, joined, denied), (8, 2, 2, 2), "{name}: {on_seats:?}");
        let leases = store.list(&shared).await.unwrap();
        assert_eq!(leases.len(), 4, "{name}: {leases:?}");
        assert!(leases.iter().all(|l| l.shared_processes == 2), "{name}: {leases:?}");
    }
}

#[tokio::test]
async fn racing_checkouts_never_exceed_the_seats_in_any_lease_store() {
    for (name, store) in lease_stores().await {
        let license = ids::new_id(ids::LICENSE);
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let store = store.clone();
                let license = license.clone();
                tokio::spawn(
                    async move { store.checkout(&checkout(&license, &format!("c{i}"), 7, 10_000)).await.unwrap() },
                )
            })
            .collect();
        let mut granted = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), CheckoutOutcome::Granted { .. }) {
                granted += 1;
            }
        }
        assert_eq!(granted, 7, "{name}");
        assert_eq!(store.list(&license).await.unwrap().len(), 7, "{name}");
    }
}

/// A checkout by `user` on `host` under `policy`, as the Seat service would build it.
fn policy_checkout(
    license_id: &str,
    seats: i32,
    policy: &SeatPolicy,
    user: &str,
    host: &str,
    feature: &str,
) -> CheckoutCommand {
    let principals = policy.principals(user, host, &[]);
    CheckoutCommand {
        user: user.into(),
        host: host.into(),
        feature: feature.into(),
        cost: policy.cost(feature),
        limits: policy.limits_for(&principals),
        share_key: policy.share_key(user, host, feature),
        max_processes: policy.max_processes_per_seat,
        ..checkout(license_id, &ids::new_id("cli"), seats, 10_000)
    }
}

fn grant(name: &str, o: CheckoutOutcome) -> (Lease, bool, i32, i32) {
    match o {
        CheckoutOutcome::Granted { lease, renewed, in_use, seats_taken } => (lease, renewed, in_use, seats_taken),
        other => panic!("{name}: expected a grant, got {other:?}"),
    }
}

fn denial(name: &str, o: CheckoutOutcome) -> SeatDenial {
    match o {
        CheckoutOutcome::Denied { denial, .. } => denial,
        other => panic!("{name}: expected a denial, got {other:?}"),
    }
}

#[tokio::test]
async fn seat_policies_conform_in_every_lease_store() {
    for (name, store) in lease_stores_on_redis_db(Some(2)).await {
        // Tokens: a heavy feature costs 3 of the 4 seats.
        let license = ids::new_id(ids::LICENSE);
        let p = SeatPolicy { feature_costs: [("cad".to_string(), 3)].into(), ..Default::default() };
        let (heavy, _, in_use, taken) =
            grant(name, store.checkout(&policy_checkout(&license, 4, &p, "a", "h", "cad")).await.unwrap());
        assert_eq!((in_use, taken, heavy.seats_held), (3, 3, 3), "{name}: tokens");
        grant(name, store.checkout(&policy_checkout(&license, 4, &p, "b", "h", "")).await.unwrap());
        assert_eq!(
            denial(name, store.checkout(&policy_checkout(&license, 4, &p, "c", "h", "")).await.unwrap()),
            SeatDenial::Full
        );
        assert_eq!(store.checkin(&license, &heavy.lease_id, 0).await.unwrap().unwrap().seats_freed, 3, "{name}");

        // Sharing: up to two processes of the same user and host share one seat.
        let license = ids::new_id(ids::LICENSE);
        let p = SeatPolicy { share_scope: ShareScope::UserHost, max_processes_per_seat: 2, ..Default::default() };
        let (a, _, _, taken_a) =
            grant(name, store.checkout(&policy_checkout(&license, 5, &p, "ann", "ws", "")).await.unwrap());
        let (b, renewed, in_use, taken_b) =
            grant(name, store.checkout(&policy_checkout(&license, 5, &p, "ann", "ws", "")).await.unwrap());
        assert_eq!((taken_a, taken_b, renewed, in_use), (1, 0, false, 1), "{name}: the second process shares");
        assert_eq!((b.group_id.as_str(), b.shared_processes), (a.group_id.as_str(), 2), "{name}");
        let (c, _, in_use, taken_c) =
            grant(name, store.checkout(&policy_checkout(&license, 5, &p, "ann", "ws", "")).await.unwrap());
        assert_eq!((taken_c, in_use), (1, 2), "{name}: a third process needs a seat of its own");
        assert_ne!(c.group_id, a.group_id);
        let (_, _, _, taken) =
            grant(name, store.checkout(&policy_checkout(&license, 5, &p, "ann", "other", "")).await.unwrap());
        assert_eq!(taken, 1, "{name}: another host does not share");
        let listed = store.list(&license).await.unwrap();
        assert_eq!(listed.iter().find(|l| l.lease_id == a.lease_id).unwrap().shared_processes, 2, "{name}");
        assert_eq!(store.checkin(&license, &a.lease_id, 0).await.unwrap().unwrap().seats_freed, 0, "{name}");
        assert_eq!(store.checkin(&license, &b.lease_id, 0).await.unwrap().unwrap().seats_freed, 1, "{name}");

        // Linger: a checked-in seat stays held and the same user, host and feature get it back.
        let license = ids::new_id(ids::LICENSE);
        let p = SeatPolicy::default();
        let (l, _, _, _) =
            grant(name, store.checkout(&policy_checkout(&license, 1, &p, "ann", "ws", "")).await.unwrap());
        let released = store.checkin(&license, &l.lease_id, 10_000).await.unwrap().unwrap();
        assert_eq!((released.seats_freed, released.lease.lingering), (0, true), "{name}");
        assert!(store.list(&license).await.unwrap()[0].lingering, "{name}: listed as lingering");
        assert_eq!(store.heartbeat(&license, &l.lease_id, None).await.unwrap(), HeartbeatOutcome::Unknown, "{name}");
        assert!(store.checkin(&license, &l.lease_id, 10_000).await.unwrap().is_none(), "{name}: checked in already");
        assert_eq!(
            denial(name, store.checkout(&policy_checkout(&license, 1, &p, "bob", "ws", "")).await.unwrap()),
            SeatDenial::Full
        );
        let (back, renewed, _, taken) =
            grant(name, store.checkout(&policy_checkout(&license, 1, &p, "ann", "ws", "")).await.unwrap());
        assert_eq!(
            (back.lease_id.as_str(), renewed, taken, back.lingering),
            (l.lease_id.as_str(), true, 0, false),
            "{name}"
        );
        store.checkin(&license, &l.lease_id, 300).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(450)).await;
        grant(name, store.checkout(&policy_checkout(&license, 1, &p, "bob", "ws", "")).await.unwrap());
        let swept = store.sweep_expired(1000).await.unwrap();
        let ended = swept.iter().find(|r| r.lease.lease_id == l.lease_id).expect("the linger end is recorded");
        assert_eq!((ended.lease.lingering, ended.seats_freed), (true, 1), "{name}");

        // Borrowing: heartbeats do not lengthen it, and an early return frees it at once.
        let license = ids::new_id(ids::LICENSE);
        let borrow = CheckoutCommand { borrowed: true, ..policy_checkout(&license, 1, &p, "ann", "laptop", "") };
        let (borrowed, _, _, _) =
            grant(name, store.checkout(&CheckoutCommand { ttl_ms: 60_000, ..borrow }).await.unwrap());
        assert!(borrowed.borrowed, "{name}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        match store.heartbeat(&license, &borrowed.lease_id, None).await.unwrap() {
            HeartbeatOutcome::Extended(l) => assert_eq!(l.expires_at, borrowed.expires_at, "{name}: not extended"),
            other => panic!("{name}: {other:?}"),
        }
        let returned = store.checkin(&license, &borrowed.lease_id, 10_000).await.unwrap().unwrap();
        assert_eq!((returned.seats_freed, returned.lease.lingering), (1, false), "{name}: returned at once");

        // Overdraft: one seat beyond the two, flagged, and no more.
        let license = ids::new_id(ids::LICENSE);
        let p = SeatPolicy { overdraft_seats: 1, ..Default::default() };
        let flags: Vec<bool> = futures::future::join_all((0..3).map(|_| {
            let command = policy_checkout(&license, 2, &p, "u", "h", "");
            let store = store.clone();
            async move { store.checkout(&command).await }
        }))
        .await
        .into_iter()
        .map(|o| grant(name, o.unwrap()).0.overdraft)
        .collect();
        assert_eq!(flags.iter().filter(|o| **o).count(), 1, "{name}: {flags:?}");
        assert_eq!(
            denial(name, store.checkout(&policy_checkout(&license, 2, &p, "u", "h", "")).await.unwrap()),
            SeatDenial::Full
        );

        // Reservations and caps.
        let license = ids::new_id(ids::LICENSE);
        let p = SeatPolicy {
            reservations: vec![Reservation { principal: Principal::group("design"), seats: 2 }],
            caps: vec![SeatCap { principal: Principal::user("mallory"), max_seats: 1 }],
            groups: vec![SeatGroup {
                name: "design".into(),
                members: vec![Principal::user("ann"), Principal::user("dan")],
            }],
            ..Default::default()
        };
        grant(name, store.checkout(&policy_checkout(&license, 3, &p, "mallory", "h", "")).await.unwrap());
        assert_eq!(
            denial(name, store.checkout(&policy_checkout(&license, 3, &p, "mallory", "h2", "")).await.unwrap()),
            SeatDenial::CapReached { principal: "u:mallory".into(), max_seats: 1 },
            "{name}"
        );
        assert_eq!(
            denial(name, store.checkout(&policy_checkout(&license, 3, &p, "bob", "h", "")).await.unwrap()),
            SeatDenial::Reserved,
            "{name}: idle reserved seats are not for others"
        );
        let (ann, _, _, _) =
            grant(name, store.checkout(&policy_checkout(&license, 3, &p, "ann", "h", "")).await.unwrap());
        assert_eq!(ann.bucket, "g:design", "{name}");
        grant(name, store.checkout(&policy_checkout(&license, 3, &p, "dan", "h", "")).await.unwrap());
        assert_eq!(
            denial(name, store.checkout(&policy_checkout(&license, 3, &p, "ann", "h", "")).await.unwrap()),
            SeatDenial::Full
        );
    }
}

#[tokio::test]
async fn reserved_seats_hold_under_a_storm_of_other_users_in_every_lease_store() {
    for (name, store) in lease_stores().await {
        let license = ids::new_id(ids::LICENSE);
        let p = SeatPolicy {
            reservations: vec![Reservation { principal: Principal::user("ann"), seats: 2 }],
            overdraft_seats: 1,
            ..Default::default()
        };
        let storm = futures::future::join_all((0..60).map(|i| {
            let store = store.clone();
            let command = policy_checkout(&license, 5, &p, &format!("user{i}"), "h", "");
            async move { store.checkout(&command).await.unwrap() }
        }));
        let (others, ann) = tokio::join!(storm, async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let a = store.checkout(&policy_checkout(&license, 5, &p, "ann", "h1", "")).await.unwrap();
            let b = store.checkout(&policy_checkout(&license, 5, &p, "ann", "h2", "")).await.unwrap();
            (a, b)
        });
        let granted: Vec<Lease> = others
            .into_iter()
            .filter_map(|o| match o {
                CheckoutOutcome::Granted { lease, .. } => Some(lease),
                _ => None,
            })
            .collect();
        assert_eq!(granted.len(), 4, "{name}: 3 unreserved seats and 1 overdraft, never more");
        assert_eq!(granted.iter().filter(|l| l.overdraft).count(), 1, "{name}");
        assert!(
            matches!(ann.0, CheckoutOutcome::Granted { .. }) && matches!(ann.1, CheckoutOutcome::Granted { .. }),
            "{name}: ann keeps her reservation"
        );
        let live = store.list(&license).await.unwrap();
        assert_eq!(live.len(), 6, "{name}");
    }
}

/// Redis keeps a seat-group record only for seats opened with a share key (memory: a lease alone
/// in its seat carries its charge itself); a lease written with a record of its own before that
/// rule is still freed once, and its record cleaned, when it leaves.
#[tokio::test]
async fn redis_keeps_seat_group_records_only_for_shared_seats() {
    if !redis_available().await {
        return;
    }
    let store = RedisLeaseStore::connect(&redis_url()).await.unwrap();
    store.open_epoch(false).await.unwrap();
    let mut redis = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let license = ids::new_id(ids::LICENSE);
    let key = |k: &str| format!("lease:{{{license}}}:{k}");
    let groups = |redis: &mut redis::aio::MultiplexedConnection| {
        let mut redis = redis.clone();
        let key = key("g");
        async move { redis::cmd("HLEN").arg(key).query_async::<i64>(&mut redis).await.unwrap() }
    };

    let (solo, _, _, _) = grant("solo", store.checkout(&checkout(&license, "solo", 3, 60_000)).await.unwrap());
    assert_eq!(solo.group_id, solo.lease_id, "a solo lease is its own seat");
    assert_eq!(solo.shared_processes, 1);
    assert_eq!(groups(&mut redis).await, 0, "no group record for a lease alone in its seat");

    let shared =
        CheckoutCommand { share_key: Some("user=u host=h".into()), ..checkout(&license, "sharer-1", 3, 60_000) };
    let (first, _, _, _) = grant("sharer 1", store.checkout(&shared).await.unwrap());
    let joining =
        CheckoutCommand { client_instance_id: "sharer-2".into(), lease_id: ids::new_id(ids::LEASE), ..shared };
    let (second, _, in_use, _) = grant("sharer 2", store.checkout(&joining).await.unwrap());
    assert_eq!(second.group_id, first.lease_id);
    assert_eq!((second.shared_processes, in_use), (2, 2), "two seats: the solo one and the shared one");
    assert_eq!(groups(&mut redis).await, 1, "one record, for the shared seat");

    // A lease as the earlier layout wrote it: the group field names itself and `g` has its record.
    let (legacy, _, _, _) = grant("legacy", store.checkout(&checkout(&license, "legacy", 3, 60_000)).await.unwrap());
    let packed: String = redis::cmd("HGET").arg(key("d")).arg(&legacy.lease_id).query_async(&mut redis).await.unwrap();
    let mut fields: Vec<&str> = packed.split('\u{1f}').collect();
    fields[8] = &legacy.lease_id;
    let _: () = redis::cmd("HSET")
        .arg(key("d"))
        .arg(&legacy.lease_id)
        .arg(fields.join("\u{1f}"))
        .query_async(&mut redis)
        .await
        .unwrap();
    let record = ["1", "1", "", "0", ""].join("\u{1f}");
    let _: () =
        redis::cmd("HSET").arg(key("g")).arg(&legacy.lease_id).arg(record).query_async(&mut redis).await.unwrap();
    assert_eq!(store.list(&license).await.unwrap().len(), 4);

    let released = store.checkin(&license, &legacy.lease_id, 0).await.unwrap().unwrap();
    assert_eq!(released.seats_freed, 1);
    let released = store.checkin(&license, &solo.lease_id, 0).await.unwrap().unwrap();
    assert_eq!(released.seats_freed, 1);
    assert_eq!(groups(&mut redis).await, 1, "the legacy record went with its lease");
    for lease in [first, second] {
        store.checkin(&license, &lease.lease_id, 0).await.unwrap().unwrap();
    }
    assert_eq!(groups(&mut redis).await, 0);
    let in_use: Option<i64> = redis::cmd("GET").arg(key("u")).query_async(&mut redis).await.unwrap();
    assert_eq!(in_use.unwrap_or(0), 0, "every seat freed exactly once");
}

/// Every Lua script of the Redis lease store compiles in Redis (SCRIPT LOAD compiles without
/// running): the prelude followed by each script, as the store sends them, including any script
/// file added later.
#[tokio::test]
async fn every_redis_lease_script_compiles_in_redis() {
    if !redis_available().await {
        return;
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/services/store/lua");
    let prelude = std::fs::read_to_string(format!("{dir}/prelude.lua")).unwrap();
    let mut conn =
        redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.expect("connect to Redis");
    let mut compiled = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "lua") || path.ends_with("prelude.lua") {
            continue;
        }
        let body = std::fs::read_to_string(&path).unwrap();
        let loaded: Result<String, _> =
            redis::cmd("SCRIPT").arg("LOAD").arg(format!("{prelude}\n{body}")).query_async(&mut conn).await;
        assert!(loaded.is_ok(), "{} does not compile: {:?}", path.display(), loaded.err());
        compiled += 1;
    }
    assert!(compiled >= 8, "found {compiled} scripts in {dir}");
}

/// The client's own lease is the one its client instance ID names *and* its user and host hold:
/// the same ID from another user or host is another client, which gets a seat of its own (or
/// none), never that lease.
#[tokio::test]
async fn a_lease_is_renewed_only_by_its_holder_in_every_lease_store() {
    for (name, store) in lease_stores().await {
        let license = ids::new_id(ids::LICENSE);
        let alice =
            CheckoutCommand { user: "alice".into(), host: "ws-1".into(), ..checkout(&license, "pid-7", 2, 10_000) };
        let (held, ..) = grant(name, store.checkout(&alice).await.unwrap());
        let mallory = CheckoutCommand { user: "mallory".into(), ..checkout(&license, "pid-7", 2, 10_000) };
        let (other, renewed, in_use, taken) = grant(name, store.checkout(&mallory).await.unwrap());
        assert_ne!(other.lease_id, held.lease_id, "{name}");
        assert_eq!((renewed, in_use, taken), (false, 2, 1), "{name}: a seat of its own");
        let elsewhere = CheckoutCommand { host: "ws-9".into(), ..alice.clone() };
        assert_eq!(denial(name, store.checkout(&elsewhere).await.unwrap()), SeatDenial::Full, "{name}");
        // Each holder still renews its own, and checking one in leaves the other.
        let (again, renewed, ..) = grant(
            name,
            store.checkout(&CheckoutCommand { lease_id: ids::new_id(ids::LEASE), ..alice.clone() }).await.unwrap(),
        );
        assert_eq!((again.lease_id.as_str(), renewed), (held.lease_id.as_str(), true), "{name}");
        assert!(store.checkin(&license, &other.lease_id, 0).await.unwrap().is_some(), "{name}");
        let (again, renewed, ..) =
            grant(name, store.checkout(&CheckoutCommand { lease_id: ids::new_id(ids::LEASE), ..alice }).await.unwrap());
        assert_eq!((again.lease_id.as_str(), renewed), (held.lease_id.as_str(), true), "{name}");
    }
}

/// A checkout's `not_after` caps the expiry of what it grants, by the store's own clock: new
/// leases, renewals and borrows alike.
#[tokio::test]
async fn no_lease_outlives_the_not_after_of_its_checkout_in_every_lease_store() {
    for (name, store) in lease_stores().await {
        let license = ids::new_id(ids::LICENSE);
        let cap = store.now().await.unwrap() + 2_000;
        let capped = CheckoutCommand { not_after: Some(cap), ..checkout(&license, "c", 2, 60_000) };
        let (lease, ..) = grant(name, store.checkout(&capped).await.unwrap());
        assert_eq!(lease.expires_at, cap, "{name}: a new lease");
        let (again, renewed, ..) = grant(name, store.checkout(&capped).await.unwrap());
        assert_eq!((renewed, again.expires_at), (true, cap), "{name}: a renewal");
        let borrow = CheckoutCommand { borrowed: true, not_after: Some(cap), ..checkout(&license, "d", 2, 60_000) };
        let (borrowed, ..) = grant(name, store.checkout(&borrow).await.unwrap());
        assert_eq!((borrowed.borrowed, borrowed.expires_at), (true, cap), "{name}: a borrow");
    }
}

/// A heartbeat never moves a lease past the `not_after` it is given (the license's end of use:
/// its expiry, or the end of its grace period), on the batched path and the locked one alike;
/// without one it extends by the full TTL.
#[tokio::test]
async fn no_heartbeat_moves_a_lease_past_its_not_after_in_every_lease_store() {
    for (name, store) in lease_stores().await {
        let license = ids::new_id(ids::LICENSE);
        let (lease, ..) = grant(name, store.checkout(&checkout(&license, "c", 2, 60_000)).await.unwrap());
        let cap = store.now().await.unwrap() + 2_000;
        match store.heartbeat(&license, &lease.lease_id, Some(cap)).await.unwrap() {
            HeartbeatOutcome::Extended(l) => assert_eq!(l.expires_at, cap, "{name}: capped"),
            other => panic!("{name}: {other:?}"),
        }
        let live = store.list(&license).await.unwrap();
        assert_eq!(live.iter().map(|l| l.expires_at).collect::<Vec<_>>(), [cap], "{name}: stored capped");
        let far = store.now().await.unwrap() + 3_600_000;
        match store.heartbeat(&license, &lease.lease_id, Some(far)).await.unwrap() {
            HeartbeatOutcome::Extended(l) => assert!(l.expires_at > cap && l.expires_at <= far, "{name}: {l:?}"),
            other => panic!("{name}: {other:?}"),
        }
        match store.heartbeat(&license, &lease.lease_id, None).await.unwrap() {
            HeartbeatOutcome::Extended(l) => assert!(l.expires_at > cap, "{name}: uncapped: {l:?}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

/// Clients waiting in line hold back general seats only: a checkout that may draw on a
/// reservation still gets its reserved seat, while others hear `Queued`.
#[tokio::test]
async fn a_queue_holds_back_general_seats_but_not_reserved_ones_in_every_lease_store() {
    for (name, store) in lease_stores().await {
        let license = ids::new_id(ids::LICENSE);
        let p = SeatPolicy {
            reservations: vec![Reservation { principal: Principal::user("vip"), seats: 1 }],
            ..Default::default()
        };
        let queued =
            |user: &str| CheckoutCommand { queue_blocked: true, ..policy_checkout(&license, 3, &p, user, "h", "") };
        assert_eq!(denial(name, store.checkout(&queued("bob")).await.unwrap()), SeatDenial::Queued, "{name}");
        let (vip, ..) = grant(name, store.checkout(&queued("vip")).await.unwrap());
        assert_eq!(vip.bucket, "u:vip", "{name}: the reserved seat");
        // Its reservation used up, vip waits in line like anyone for a general seat.
        assert_eq!(denial(name, store.checkout(&queued("vip")).await.unwrap()), SeatDenial::Queued, "{name}");
    }
}

/// A heartbeat on a lease that expired answers Expired until the sweep has recorded the expiry,
/// whether or not another call reaped the pool first, then Unknown: the same on every store.
#[tokio::test]
async fn an_expired_lease_answers_expired_until_the_sweep_records_it_in_every_lease_store() {
    for (name, store) in lease_stores_on_redis_db(Some(3)).await {
        let license = ids::new_id(ids::LICENSE);
        let (lease, ..) = grant(name, store.checkout(&checkout(&license, "gone", 2, 300)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Another checkout reaps the pool (the expired lease leaves it).
        grant(name, store.checkout(&checkout(&license, "next", 2, 10_000)).await.unwrap());
        let outcome = store.heartbeat(&license, &lease.lease_id, None).await.unwrap();
        assert_eq!(outcome, HeartbeatOutcome::Expired, "{name}");
        let mut recorded = false;
        for _ in 0..20 {
            let swept = store.sweep_expired(1_000).await.unwrap();
            if swept.iter().any(|r| r.lease.lease_id == lease.lease_id) {
                recorded = true;
                break;
            }
        }
        assert!(recorded, "{name}: the sweep records the expiry");
        assert_eq!(
            store.heartbeat(&license, &lease.lease_id, None).await.unwrap(),
            HeartbeatOutcome::Unknown,
            "{name}"
        );
    }
}

/// A license of the suite with one meter, stored in `store`.
async fn metered_license(store: &SqlStore, meter: licensing_domain::meter::Meter) -> License {
    let (customer, _) = seed_customer_once(store).await;
    let mut l = new_license(&customer, LicenseKind::Concurrent, 5);
    l.meters = vec![meter];
    let new = NewLicense {
        license: l.clone(),
        key_digest: format!("digest-{}", l.license_id),
        activation_password_salt: "salt".into(),
    };
    store.insert_license(&new, audit("license.issued", &l.license_id), None).await.unwrap();
    l
}

/// The suite product and a customer, made once per store.
async fn seed_customer_once(store: &SqlStore) -> (String, ()) {
    if store.get_product("suite").await.unwrap().is_none() {
        store.create_product(&suite_product(), audit("product.created", "suite")).await.unwrap();
    }
    let customer = Customer {
        customer_id: ids::new_id(ids::CUSTOMER),
        company_name: "Metered".into(),
        contact_email: format!("{}@b.example", ids::new_id("m").to_lowercase()),
        contact_name: String::new(),
        phone: String::new(),
        created_at: 1,
    };
    store.create_customer(&customer, None, audit("customer.created", &customer.customer_id)).await.unwrap();
    (customer.customer_id, ())
}

fn exports(limit: i64, overage: i64) -> licensing_domain::meter::Meter {
    use licensing_domain::meter::{Meter, MeterReset};
    Meter { code: "exports".into(), limit, overage, reset: MeterReset::Monthly }
}

fn use_of(license: &License, amount: i64, key: &str, at: i64) -> licensing_domain::meter::RecordUse {
    licensing_domain::meter::RecordUse {
        license_id: license.license_id.clone(),
        meter: "exports".into(),
        amount,
        idempotency_key: key.into(),
        at,
    }
}

fn any_state(_: &License) -> Result<(), Refusal> {
    Ok(())
}

#[tokio::test]
async fn meter_store_conformance() {
    use licensing_domain::clock::parse_instant;
    use licensing_domain::meter::UseRefused;
    let december = parse_instant("2026-12-02T10:00:00Z").unwrap();
    let january = parse_instant("2027-01-15T10:00:00Z").unwrap();
    for (name, store) in sql_stores().await {
        let license = metered_license(&store, exports(20, 0)).await;
        let first = store.record_use(&use_of(&license, 5, "k1", december), &any_state).await.unwrap();
        assert_eq!((first.usage.used, first.usage.remaining(), first.replayed), (5, 15, false), "{name}");
        assert_eq!(first.usage.period.start, parse_instant("2026-12-01").unwrap(), "{name}");
        assert_eq!(first.usage.period.end, Some(parse_instant("2027-01-01").unwrap()), "{name}");

        // The same key again is the same use: answered, not counted.
        let again = store.record_use(&use_of(&license, 5, "k1", december), &any_state).await.unwrap();
        assert_eq!((again.usage.used, again.replayed), (5, true), "{name}");
        // The same key for another amount is a mistake, refused.
        let reused = store.record_use(&use_of(&license, 6, "k1", december), &any_state).await.unwrap_err();
        assert!(matches!(reused, MeterStoreError::Refused(UseRefused::KeyReused { recorded_amount: 5, .. })), "{name}");

        // Over the limit: refused, nothing counted.
        let over = store.record_use(&use_of(&license, 16, "k2", december), &any_state).await.unwrap_err();
        assert!(
            matches!(over, MeterStoreError::Refused(UseRefused::LimitReached { used: 5, left: 15, .. })),
            "{name}: {over:?}"
        );
        // A refused key was not spent: the same key may count once the use fits.
        let fits = store.record_use(&use_of(&license, 15, "k2", december), &any_state).await.unwrap();
        assert_eq!((fits.usage.used, fits.usage.remaining()), (20, 0), "{name}");

        // An overage allowance lets use go past the limit, and only that far.
        let change = LicenseChange::SetMeter(exports(20, 5));
        store
            .update_license(&license.license_id, &change, december, audit("m", &license.license_id), None)
            .await
            .unwrap();
        let into_overage = store.record_use(&use_of(&license, 4, "k3", december), &any_state).await.unwrap();
        assert_eq!((into_overage.usage.used, into_overage.usage.overage_used()), (24, 4), "{name}");
        let past = store.record_use(&use_of(&license, 2, "k4", december), &any_state).await.unwrap_err();
        assert!(matches!(past, MeterStoreError::Refused(UseRefused::LimitReached { left: 1, .. })), "{name}");

        // A new month counts from zero; the old one stays in the history.
        let next = store.record_use(&use_of(&license, 3, "k5", january), &any_state).await.unwrap();
        assert_eq!((next.usage.used, next.usage.period.start), (3, parse_instant("2027-01-01").unwrap()), "{name}");
        let fresh = store.get_license(&license.license_id).await.unwrap().unwrap();
        let current = store.current_meter_usage(&fresh, january).await.unwrap();
        assert_eq!(current.iter().map(|u| (u.meter.code.as_str(), u.used)).collect::<Vec<_>>(), [("exports", 3)]);
        let history = store.meter_history(&license.license_id).await.unwrap();
        assert_eq!(history.iter().map(|u| u.used).collect::<Vec<_>>(), [24, 3], "{name}");

        // Unknown meters, unusable licenses and unknown licenses count nothing.
        let mut unknown = use_of(&license, 1, "k6", january);
        unknown.meter = "renders".into();
        let err = store.record_use(&unknown, &any_state).await.unwrap_err();
        assert!(
            matches!(err, MeterStoreError::Refused(UseRefused::UnknownMeter { ref known, .. }) if known == "exports")
        );
        let refuse =
            |l: &License| Err(Refusal { reason: "SUSPENDED", message: format!("{} is suspended", l.license_id) });
        let err = store.record_use(&use_of(&license, 1, "k7", january), &refuse).await.unwrap_err();
        assert!(matches!(err, MeterStoreError::Refused(UseRefused::NotUsable(_))), "{name}");
        let mut nobody = use_of(&license, 1, "k8", january);
        nobody.license_id = "lic_NOBODY".into();
        assert!(matches!(store.record_use(&nobody, &any_state).await, Err(MeterStoreError::LicenseNotFound(_))));

        // A removed meter counts no more, and what it counted stays reported.
        let change = LicenseChange::RemoveMeter("exports".into());
        store
            .update_license(&license.license_id, &change, january, audit("m", &license.license_id), None)
            .await
            .unwrap();
        let err = store.record_use(&use_of(&license, 1, "k9", january), &any_state).await.unwrap_err();
        assert!(matches!(err, MeterStoreError::Refused(UseRefused::UnknownMeter { .. })), "{name}");
        assert_eq!(store.meter_history(&license.license_id).await.unwrap().len(), 2, "{name}");
        // A replay of an acknowledged use still answers as it did.
        let replay = store.record_use(&use_of(&license, 3, "k5", january), &any_state).await.unwrap();
        assert_eq!((replay.usage.used, replay.replayed), (3, true), "{name}");
    }
}

#[tokio::test]
async fn racing_uses_of_a_meter_never_exceed_its_limit_on_every_backend() {
    let now = SystemClock.now();
    for (name, store) in sql_stores().await {
        let license = metered_license(&store, exports(100, 0)).await;
        // 80 used: 20 left for 50 uses that arrive together.
        store.record_use(&use_of(&license, 80, "before", now), &any_state).await.unwrap();
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let (store, command) = (store.clone(), use_of(&license, 1, &format!("race-{i}"), now));
                tokio::spawn(async move { store.record_use(&command, &any_state).await })
            })
            .collect();
        let mut accepted = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(recorded) => {
                    assert!(!recorded.replayed && recorded.usage.used <= 100, "{name}");
                    accepted += 1;
                }
                Err(MeterStoreError::Refused(licensing_domain::meter::UseRefused::LimitReached { .. })) => {}
                Err(e) => panic!("{name}: {e:?}"),
            }
        }
        assert_eq!(accepted, 20, "{name}");
        let fresh = store.get_license(&license.license_id).await.unwrap().unwrap();
        assert_eq!(store.current_meter_usage(&fresh, now).await.unwrap()[0].used, 100, "{name}");
    }
}

#[tokio::test]
async fn a_use_retried_under_its_key_counts_once_on_every_backend() {
    let now = SystemClock.now();
    for (name, store) in sql_stores().await {
        let license = metered_license(&store, exports(100, 0)).await;
        // Ten retries of one use, all at once (a product whose answers were lost).
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (store, command) = (store.clone(), use_of(&license, 7, "the-same-key", now));
                tokio::spawn(async move { store.record_use(&command, &any_state).await.unwrap() })
            })
            .collect();
        let mut counted = 0;
        for t in tasks {
            let recorded = t.await.unwrap();
            assert_eq!(recorded.usage.used, 7, "{name}: every answer tells the one count");
            counted += usize::from(!recorded.replayed);
        }
        assert_eq!(counted, 1, "{name}");
        let fresh = store.get_license(&license.license_id).await.unwrap().unwrap();
        assert_eq!(store.current_meter_usage(&fresh, now).await.unwrap()[0].used, 7, "{name}");
    }
}

#[tokio::test]
async fn policies_and_first_use_conform_on_every_backend() {
    use licensing_domain::clock::DAY;
    use licensing_domain::policy::{FirstUse, LicenseTerms, Policy, TermsStart};
    let now = SystemClock.now();
    for (name, store) in sql_stores().await {
        let (customer, _) = seed_customer_once(&store).await;
        let terms = LicenseTerms {
            kind: LicenseKind::NodeLocked,
            seats: 3,
            allowed_deactivations: 2,
            modules: vec!["a".into()],
            validity_ms: Some(365 * DAY),
            upgrade_period_ms: Some(30 * DAY),
            start: TermsStart::FirstUse,
            grace_period_ms: 0,
            heartbeat_timeout_ms: None,
            meters: vec![],
            trial: false,
        };
        let policy = Policy {
            policy_id: ids::new_id(ids::POLICY),
            product_code: "suite".into(),
            name: "Annual".into(),
            revision: 1,
            terms: terms.clone(),
            created_at: now,
            updated_at: now,
        };
        store.create_policy(&policy, audit("policy.created", &policy.policy_id)).await.unwrap();
        assert_eq!(store.get_policy(&policy.policy_id).await.unwrap(), Some(policy.clone()), "{name}");
        let twin = Policy { policy_id: ids::new_id(ids::POLICY), ..policy.clone() };
        assert!(
            matches!(store.create_policy(&twin, audit("x", "y")).await, Err(StoreError::AlreadyExists(_))),
            "{name}: one name per product"
        );
        let longer = LicenseTerms { seats: 5, ..terms.clone() };
        let updated = store.update_policy_terms(&policy.policy_id, &longer, now + 1, audit("u", "p")).await.unwrap();
        assert_eq!((updated.revision, updated.terms.seats, updated.updated_at), (2, 5, now + 1), "{name}");
        assert_eq!(store.list_policies("suite").await.unwrap().len(), 1, "{name}");
        assert!(store.list_policies("other").await.unwrap().is_empty(), "{name}");
        assert!(matches!(
            store.update_policy_terms("pol_NONE", &terms, now, audit("u", "p")).await,
            Err(StoreError::NotFound(_))
        ));

        // A license whose time counts from its first use: racing starts start it once.
        let mut l = new_license(&customer, LicenseKind::NodeLocked, 3);
        l.first_use = Some(FirstUse { validity_ms: Some(365 * DAY), upgrade_period_ms: None, started_at: None });
        l.expires_at = None;
        l.policy_id = Some(policy.policy_id.clone());
        l.policy_revision = 1;
        let new = NewLicense {
            license: l.clone(),
            key_digest: format!("digest-{}", l.license_id),
            activation_password_salt: "salt".into(),
        };
        store.insert_license(&new, audit("license.issued", &l.license_id), None).await.unwrap();
        let stored = store.get_license(&l.license_id).await.unwrap().unwrap();
        assert!(stored.awaits_first_use() && stored.expires_at.is_none(), "{name}");
        assert_eq!((stored.policy_id.as_deref(), stored.policy_revision), (Some(policy.policy_id.as_str()), 1));
        let starts: Vec<_> = (0..8)
            .map(|i| {
                let (store, id) = (store.clone(), l.license_id.clone());
                tokio::spawn(async move { store.start_first_use(&id, now + 10 + i).await.unwrap() })
            })
            .collect();
        let mut expiries = HashSet::new();
        for s in starts {
            expiries.insert(s.await.unwrap().expires_at);
        }
        assert_eq!(expiries.len(), 1, "{name}: every racer sees the one start");
        let started = store.get_license(&l.license_id).await.unwrap().unwrap();
        let at = started.first_use.as_ref().unwrap().started_at.unwrap();
        assert_eq!(started.expires_at, Some(at + 365 * DAY), "{name}");
        let firsts = store.list_audit(&l.license_id, &Page::default()).await.unwrap();
        assert_eq!(firsts.iter().filter(|e| e.action == "license.first_used").count(), 1, "{name}");

        // Activation starts it too, inside its own transaction.
        let mut m = new_license(&customer, LicenseKind::NodeLocked, 3);
        m.first_use = Some(FirstUse { validity_ms: None, upgrade_period_ms: Some(30 * DAY), started_at: None });
        m.expires_at = None;
        let new = NewLicense {
            license: m.clone(),
            key_digest: format!("digest-{}", m.license_id),
            activation_password_salt: "salt".into(),
        };
        store.insert_license(&new, audit("license.issued", &m.license_id), None).await.unwrap();
        let mut command = activate_command(&m.license_id, "first-box");
        command.now = now + 500;
        match store.activate(&command, &|_| Ok(())).await.unwrap() {
            ActivateOutcome::New(_, license) => {
                assert_eq!(license.upgrades_until, Some(now + 500 + 30 * DAY), "{name}");
                assert_eq!(license.first_use.unwrap().started_at, Some(now + 500), "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

/// A trial request as the Activation service makes it, for `machine`'s fingerprint.
fn trial_command(
    policy: &licensing_domain::policy::Policy,
    fingerprint: Vec<ComponentDigest>,
    now: i64,
) -> licensing_domain::trial::TrialCommand {
    let license = licensing_domain::trial::trial_license(ids::new_id(ids::LICENSE), policy, now);
    licensing_domain::trial::TrialCommand {
        product_code: policy.product_code.clone(),
        fingerprint,
        match_threshold: 0.6,
        new_license: NewLicense {
            key_digest: format!("digest-{}", license.license_id),
            activation_password_salt: "salt".into(),
            license,
        },
        now,
    }
}

/// One trial per machine and product on every backend: the same machine (a component changed,
/// still above the threshold) gets its trial back, another machine gets its own, racing
/// requests from one machine make one trial, and a conversion keeps the trial's activation.
#[tokio::test]
async fn trials_are_once_per_machine_and_convert_in_place_on_every_backend() {
    use licensing_domain::clock::DAY;
    use licensing_domain::policy::{LicenseTerms, Policy, TermsStart};
    use licensing_domain::trial::{TrialStart, TrialStats, TrialStore, TRIAL_CUSTOMER_ID};
    let now = SystemClock.now();
    for (name, store) in sql_stores().await {
        let (customer, _) = seed_customer_once(&store).await;
        let terms = LicenseTerms {
            kind: LicenseKind::NodeLocked,
            seats: 1,
            allowed_deactivations: 0,
            modules: vec![],
            validity_ms: Some(14 * DAY),
            upgrade_period_ms: None,
            start: TermsStart::Issue,
            grace_period_ms: 0,
            heartbeat_timeout_ms: None,
            meters: vec![],
            trial: true,
        };
        let policy = Policy {
            policy_id: ids::new_id(ids::POLICY),
            product_code: "suite".into(),
            name: "Trial".into(),
            revision: 1,
            terms: terms.clone(),
            created_at: now,
            updated_at: now,
        };
        store.create_policy(&policy, audit("policy.created", &policy.policy_id)).await.unwrap();
        let first = match store.start_trial(&trial_command(&policy, digests("m1"), now)).await.unwrap() {
            TrialStart::New(l) => l,
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!((first.customer_id.as_str(), first.expires_at), (TRIAL_CUSTOMER_ID, Some(now + 14 * DAY)), "{name}");
        // The same machine with its host name changed (3 of 4 components): the same trial.
        let mut changed = digests("m1");
        changed[3].digest = "renamed-host".into();
        match store.start_trial(&trial_command(&policy, changed.clone(), now + DAY)).await.unwrap() {
            TrialStart::Existing { license, converted_at: None } => {
                assert_eq!(
                    (license.license_id.as_str(), license.expires_at),
                    (first.license_id.as_str(), first.expires_at),
                    "{name}"
                )
            }
            other => panic!("{name}: {other:?}"),
        }
        // Remembered as it looks now: another change from there still matches.
        let mut drifted = changed.clone();
        drifted[2].digest = "new-nic".into();
        assert!(
            matches!(
                store.start_trial(&trial_command(&policy, drifted.clone(), now + DAY)).await.unwrap(),
                TrialStart::Existing { license, .. } if license.license_id == first.license_id
            ),
            "{name}"
        );
        // Half the components (below the 0.6 threshold) is another machine.
        let mut other = digests("m1");
        other[0].digest = "x".into();
        other[1].digest = "y".into();
        other[2].digest = "z".into();
        let second = match store.start_trial(&trial_command(&policy, other, now)).await.unwrap() {
            TrialStart::New(l) => l,
            other => panic!("{name}: {other:?}"),
        };
        assert_ne!(second.license_id, first.license_id);

        // Eight racing requests from one new machine: one trial, every racer told of it.
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let (store, command) = (store.clone(), trial_command(&policy, digests("racer"), now));
                tokio::spawn(async move { store.start_trial(&command).await.unwrap() })
            })
            .collect();
        let (mut ids_seen, mut new) = (HashSet::new(), 0);
        for r in racers {
            match r.await.unwrap() {
                TrialStart::New(l) => {
                    new += 1;
                    ids_seen.insert(l.license_id);
                }
                TrialStart::Existing { license, .. } => {
                    ids_seen.insert(license.license_id);
                }
            }
        }
        assert_eq!((new, ids_seen.len()), (1, 1), "{name}: one trial for one machine");
        assert_eq!(
            store.trial_stats("suite", now).await.unwrap(),
            TrialStats { started: 3, active: 3, expired: 0, converted: 0 },
            "{name}"
        );

        // The first machine activates its trial; converting keeps that activation.
        let mut activate = activate_command(&first.license_id, "m1");
        activate.fingerprint = changed;
        let activation = match store.activate(&activate, &|_| Ok(())).await.unwrap() {
            ActivateOutcome::New(a, _) => a,
            other => panic!("{name}: {other:?}"),
        };
        let paid = Policy {
            policy_id: ids::new_id(ids::POLICY),
            name: "Annual".into(),
            terms: LicenseTerms { seats: 2, validity_ms: Some(365 * DAY), trial: false, ..terms.clone() },
            ..policy.clone()
        };
        let converted = store
            .convert_trial(
                &first.license_id,
                &customer,
                true,
                &paid,
                now + 2 * DAY,
                audit("license.trial_converted", &first.license_id),
            )
            .await
            .unwrap();
        assert_eq!(converted.customer_id, customer, "{name}");
        assert_eq!((converted.seats, converted.expires_at), (2, Some(now + 2 * DAY + 365 * DAY)), "{name}");
        let stored = store.get_license(&first.license_id).await.unwrap().unwrap();
        assert_eq!((stored.customer_id.as_str(), stored.activations_used), (customer.as_str(), 1), "{name}");
        let live = store.list_live_activations(&first.license_id).await.unwrap();
        assert_eq!(
            live.iter().map(|a| a.installation_id.clone()).collect::<Vec<_>>(),
            vec![activation.installation_id],
            "{name}"
        );
        assert!(
            matches!(
                store.convert_trial(&first.license_id, &customer, false, &paid, now, audit("x", "y")).await,
                Err(UpdateError::Rejected(_))
            ),
            "{name}: converted once"
        );
        assert!(
            matches!(
                store.start_trial(&trial_command(&policy, drifted, now)).await.unwrap(),
                TrialStart::Existing { converted_at: Some(_), .. }
            ),
            "{name}: a converted machine starts no new trial"
        );
        // At the trial length, the unconverted ones have expired.
        assert_eq!(
            store.trial_stats("suite", now + 15 * DAY).await.unwrap(),
            TrialStats { started: 3, active: 0, expired: 2, converted: 1 },
            "{name}"
        );
        let actions = store.list_audit(&first.license_id, &Page::default()).await.unwrap();
        assert!(actions.iter().any(|e| e.action == "license.trial_started"), "{name}");
        assert!(actions.iter().any(|e| e.action == "license.trial_converted"), "{name}");
        assert!(matches!(
            store
                .start_trial(&trial_command(
                    &Policy { product_code: "nope".into(), ..policy.clone() },
                    digests("q"),
                    now
                ))
                .await,
            Err(StoreError::NotFound(_))
        ));
    }
}
