//! [`CatalogStore`] on SQL.

use super::*;
use async_trait::async_trait;
use licensing_domain::change::LicenseChange;
use licensing_domain::clock::{Clock, Millis, SystemClock};
use licensing_domain::model::*;
use licensing_domain::store::{CatalogStore, UpdateError};
use licensing_domain::text::quoted;
use sqlx::{Any, Transaction};

pub(crate) const LICENSE_COLUMNS: &str = "license_id, product_code, customer_id, kind, status, seats, allowed_deactivations, \
     activations_used, deactivations_used, modules_json, valid_from, expires_at, upgrades_until, \
     associated_customer_id, portal_deactivation_counts, replaces_license_id, notes, seat_policy_json, created_at, updated_at, licensee_name, meters_json, grace_period_ms, heartbeat_timeout_ms, \
     policy_id, policy_revision, first_use_json, module_entitlements_json, server_grants_json";

pub(crate) fn license_from_row(row: &AnyRow) -> Result<License, StoreError> {
    let kind = get_str(row, "kind")?;
    let status = get_str(row, "status")?;
    Ok(License {
        license_id: get_str(row, "license_id")?,
        product_code: get_str(row, "product_code")?,
        customer_id: get_str(row, "customer_id")?,
        kind: LicenseKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("kind: {kind}")))?,
        status: LicenseStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("status: {status}")))?,
        seats: get_i32(row, "seats")?,
        allowed_deactivations: get_i32(row, "allowed_deactivations")?,
        activations_used: get_i32(row, "activations_used")?,
        deactivations_used: get_i32(row, "deactivations_used")?,
        modules: from_json("modules_json", &get_str(row, "modules_json")?)?,
        valid_from: get_i64(row, "valid_from")?,
        expires_at: get_opt_i64(row, "expires_at")?,
        upgrades_until: get_opt_i64(row, "upgrades_until")?,
        associated_customer_id: get_opt_str(row, "associated_customer_id")?,
        portal_deactivation_counts: get_i64(row, "portal_deactivation_counts")? != 0,
        replaces_license_id: get_opt_str(row, "replaces_license_id")?,
        notes: get_str(row, "notes")?,
        seat_policy: from_json("seat_policy_json", &get_str(row, "seat_policy_json")?)?,
        created_at: get_i64(row, "created_at")?,
        updated_at: get_i64(row, "updated_at")?,
        licensee_name: get_str(row, "licensee_name")?,
        meters: from_json("meters_json", &get_str(row, "meters_json")?)?,
        grace_period_ms: get_i64(row, "grace_period_ms")?,
        heartbeat_timeout_ms: get_opt_i64(row, "heartbeat_timeout_ms")?,
        policy_id: get_opt_str(row, "policy_id")?,
        policy_revision: get_i64(row, "policy_revision")?,
        first_use: get_opt_str(row, "first_use_json")?.map(|j| from_json("first_use_json", &j)).transpose()?,
        module_entitlements: from_json("module_entitlements_json", &get_str(row, "module_entitlements_json")?)?,
        server_grants: from_json("server_grants_json", &get_str(row, "server_grants_json")?)?,
    })
}

pub(crate) fn product_from_row(row: &AnyRow) -> Result<Product, StoreError> {
    Ok(Product {
        code: get_str(row, "code")?,
        name: get_str(row, "name")?,
        modules: from_json("modules_json", &get_str(row, "modules_json")?)?,
        versions: from_json("versions_json", &get_str(row, "versions_json")?)?,
        created_at: get_i64(row, "created_at")?,
    })
}

pub(crate) fn customer_from_row(row: &AnyRow) -> Result<Customer, StoreError> {
    Ok(Customer {
        customer_id: get_str(row, "customer_id")?,
        company_name: get_str(row, "company_name")?,
        contact_email: get_str(row, "contact_email")?,
        contact_name: get_str(row, "contact_name")?,
        phone: get_str(row, "phone")?,
        created_at: get_i64(row, "created_at")?,
    })
}

pub(crate) fn now() -> Millis {
    SystemClock.now()
}

/// Appends an audit record inside the caller's transaction.
pub(crate) async fn insert_audit(
    tx: &mut Transaction<'_, Any>,
    audit: &AuditRecord,
    at: Millis,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_events (occurred_at, actor, action, subject, details_json) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(at)
    .bind(&audit.actor)
    .bind(&audit.action)
    .bind(&audit.subject)
    .bind(audit.details.to_string())
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// Inserts a license row inside the caller's transaction.
pub(crate) async fn insert_license_row(tx: &mut Transaction<'_, Any>, new: &NewLicense) -> Result<(), StoreError> {
    let l = &new.license;
    let sql = format!(
        "INSERT INTO licenses ({LICENSE_COLUMNS}, key_digest, password_salt) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31)"
    );
    sqlx::query(&sql)
        .bind(&l.license_id)
        .bind(&l.product_code)
        .bind(&l.customer_id)
        .bind(l.kind.as_str())
        .bind(l.status.as_str())
        .bind(i64::from(l.seats))
        .bind(i64::from(l.allowed_deactivations))
        .bind(i64::from(l.activations_used))
        .bind(i64::from(l.deactivations_used))
        .bind(to_json(&l.modules))
        .bind(l.valid_from)
        .bind(l.expires_at)
        .bind(l.upgrades_until)
        .bind(l.associated_customer_id.clone())
        .bind(i64::from(l.portal_deactivation_counts))
        .bind(l.replaces_license_id.clone())
        .bind(&l.notes)
        .bind(to_json(&l.seat_policy))
        .bind(l.created_at)
        .bind(l.updated_at)
        .bind(&l.licensee_name)
        .bind(to_json(&l.meters))
        .bind(l.grace_period_ms)
        .bind(l.heartbeat_timeout_ms)
        .bind(l.policy_id.clone())
        .bind(l.policy_revision)
        .bind(l.first_use.as_ref().map(to_json))
        .bind(to_json(&l.module_entitlements))
        .bind(to_json(&l.server_grants))
        .bind(&new.key_digest)
        .bind(&new.activation_password_salt)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(())
}

pub(crate) async fn insert_receipt(tx: &mut Transaction<'_, Any>, r: &Receipt) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO receipts (receipt_id, license_id, customer_id, kind, amount_minor, currency, paid_at, recurring_months) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&r.receipt_id)
    .bind(&r.license_id)
    .bind(&r.customer_id)
    .bind(&r.kind)
    .bind(r.amount_minor)
    .bind(&r.currency)
    .bind(r.paid_at)
    .bind(i64::from(r.recurring_months))
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(())
}

impl SqlStore {
    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Any>, StoreError> {
        self.pool.begin().await.map_err(map_err)
    }

    /// Reads a license inside a transaction, locking its row where the dialect can.
    pub(crate) async fn lock_license(
        &self,
        tx: &mut Transaction<'_, Any>,
        license_id: &str,
    ) -> Result<Option<License>, StoreError> {
        let sql = format!("SELECT {LICENSE_COLUMNS} FROM licenses WHERE license_id = $1{}", self.dialect.for_update());
        let row = sqlx::query(&sql).bind(license_id).fetch_optional(&mut **tx).await.map_err(map_err)?;
        row.as_ref().map(license_from_row).transpose()
    }

    /// Changes a product with its row locked (so two changes at once both stay, and a version
    /// or module is never added twice), with `audit`, in one transaction.
    async fn change_product(
        &self,
        code: &str,
        audit: AuditRecord,
        change: impl FnOnce(&mut Product) -> Result<(), StoreError>,
    ) -> Result<Product, StoreError> {
        let mut tx = self.begin().await?;
        let sql = format!("SELECT * FROM products WHERE code = $1{}", self.dialect.for_update());
        let row = sqlx::query(&sql).bind(code).fetch_optional(&mut *tx).await.map_err(map_err)?;
        let mut product = row
            .as_ref()
            .map(product_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("product {}", quoted(code))))?;
        change(&mut product)?;
        sqlx::query("UPDATE products SET modules_json = $1, versions_json = $2 WHERE code = $3")
            .bind(to_json(&product.modules))
            .bind(to_json(&product.versions))
            .bind(code)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        insert_audit(&mut tx, &audit, now()).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(product)
    }

    /// Runs a statement that writes one row and an audit record, in one transaction.
    async fn write_with_audit<'q>(
        &self,
        query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
        audit: &AuditRecord,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let done = query.execute(&mut *tx).await.map_err(map_err)?;
        insert_audit(&mut tx, audit, now()).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl CatalogStore for SqlStore {
    #[tracing::instrument(name = "store.create_product", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn create_product(&self, product: &Product, audit: AuditRecord) -> Result<(), StoreError> {
        let q = sqlx::query(
            "INSERT INTO products (code, name, modules_json, versions_json, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&product.code)
        .bind(&product.name)
        .bind(to_json(&product.modules))
        .bind(to_json(&product.versions))
        .bind(product.created_at);
        self.write_with_audit(q, &audit).await.map_err(|e| match e {
            StoreError::AlreadyExists(_) => StoreError::AlreadyExists(format!("product {}", quoted(&product.code))),
            other => other,
        })?;
        Ok(())
    }

    #[tracing::instrument(name = "store.get_product", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn get_product(&self, code: &str) -> Result<Option<Product>, StoreError> {
        let row = sqlx::query("SELECT * FROM products WHERE code = $1")
            .bind(code)
            .fetch_optional(&self.readers)
            .await
            .map_err(map_err)?;
        row.as_ref().map(product_from_row).transpose()
    }

    #[tracing::instrument(name = "store.list_products", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn list_products(&self, page: &Page) -> Result<Vec<Product>, StoreError> {
        let rows = sqlx::query("SELECT * FROM products WHERE code > $1 ORDER BY code LIMIT $2")
            .bind(page.after.clone().unwrap_or_default())
            .bind(limit(page))
            .fetch_all(&self.readers)
            .await
            .map_err(map_err)?;
        rows.iter().map(product_from_row).collect()
    }

    #[tracing::instrument(name = "store.add_product_version", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn add_product_version(
        &self,
        code: &str,
        version: ProductVersion,
        audit: AuditRecord,
    ) -> Result<Product, StoreError> {
        self.change_product(code, audit, |product| {
            if product.versions.iter().any(|v| v.version == version.version) {
                return Err(StoreError::AlreadyExists(format!(
                    "version {} of product {}",
                    quoted(&version.version),
                    quoted(code)
                )));
            }
            product.versions.push(version);
            product.versions.sort_by_key(|v| v.released_at);
            Ok(())
        })
        .await
    }

    #[tracing::instrument(name = "store.add_product_module", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn add_product_module(&self, code: &str, module: Module, audit: AuditRecord) -> Result<Product, StoreError> {
        self.change_product(code, audit, |product| {
            if product.has_module(&module.code) {
                return Err(StoreError::AlreadyExists(format!(
                    "module {} of product {}",
                    quoted(&module.code),
                    quoted(code)
                )));
            }
            product.modules.push(module);
            Ok(())
        })
        .await
    }

    #[tracing::instrument(name = "store.create_customer", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn create_customer(
        &self,
        customer: &Customer,
        password_hash: Option<&str>,
        audit: AuditRecord,
    ) -> Result<(), StoreError> {
        let q = sqlx::query("INSERT INTO customers (customer_id, company_name, contact_email, password_hash, created_at, contact_name, phone) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&customer.customer_id)
            .bind(&customer.company_name)
            .bind(&customer.contact_email)
            .bind(password_hash.map(str::to_owned))
            .bind(customer.created_at)
            .bind(&customer.contact_name)
            .bind(&customer.phone);
        self.write_with_audit(q, &audit).await.map_err(|e| match e {
            StoreError::AlreadyExists(_) => {
                StoreError::AlreadyExists(format!("a customer with contact email {}", customer.contact_email))
            }
            other => other,
        })?;
        Ok(())
    }

    #[tracing::instrument(name = "store.get_customer", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn get_customer(&self, customer_id: &str) -> Result<Option<Customer>, StoreError> {
        let row = sqlx::query("SELECT * FROM customers WHERE customer_id = $1")
            .bind(customer_id)
            .fetch_optional(&self.readers)
            .await
            .map_err(map_err)?;
        row.as_ref().map(customer_from_row).transpose()
    }

    #[tracing::instrument(name = "store.find_customer_by_email", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn find_customer_by_email(&self, email: &str) -> Result<Option<Customer>, StoreError> {
        let row = sqlx::query("SELECT * FROM customers WHERE contact_email = $1")
            .bind(email.to_lowercase())
            .fetch_optional(&self.readers)
            .await
            .map_err(map_err)?;
        row.as_ref().map(customer_from_row).transpose()
    }

    #[tracing::instrument(name = "store.list_customers", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn list_customers(&self, query: Option<&str>, page: &Page) -> Result<Vec<Customer>, StoreError> {
        let pattern = format!("%{}%", query.unwrap_or_default().to_lowercase());
        let rows = sqlx::query(
            "SELECT * FROM customers WHERE customer_id > $1 AND (LOWER(company_name) LIKE $2 OR contact_email LIKE $2) \
             ORDER BY customer_id LIMIT $3",
        )
        .bind(page.after.clone().unwrap_or_default())
        .bind(pattern)
        .bind(limit(page))
        .fetch_all(&self.readers)
        .await
        .map_err(map_err)?;
        rows.iter().map(customer_from_row).collect()
    }

    #[tracing::instrument(name = "store.customer_password_hash", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn customer_password_hash(&self, customer_id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT password_hash FROM customers WHERE customer_id = $1")
            .bind(customer_id)
            .fetch_optional(&self.readers)
            .await
            .map_err(map_err)?;
        Ok(match row {
            Some(row) => get_opt_str(&row, "password_hash")?,
            None => None,
        })
    }

    #[tracing::instrument(name = "store.set_customer_password_hash", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn set_customer_password_hash(
        &self,
        customer_id: &str,
        password_hash: &str,
        audit: AuditRecord,
    ) -> Result<(), StoreError> {
        let q = sqlx::query("UPDATE customers SET password_hash = $1 WHERE customer_id = $2")
            .bind(password_hash.to_owned())
            .bind(customer_id.to_owned());
        match self.write_with_audit(q, &audit).await? {
            0 => Err(StoreError::NotFound(format!("customer {customer_id}"))),
            _ => Ok(()),
        }
    }

    #[tracing::instrument(name = "store.insert_license", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn insert_license(
        &self,
        new: &NewLicense,
        audit: AuditRecord,
        receipt: Option<&Receipt>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        insert_license_row(&mut tx, new).await?;
        insert_audit(&mut tx, &audit, new.license.created_at).await?;
        if let Some(receipt) = receipt {
            insert_receipt(&mut tx, receipt).await?;
        }
        tx.commit().await.map_err(map_err)
    }

    #[tracing::instrument(name = "store.get_license", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn get_license(&self, license_id: &str) -> Result<Option<License>, StoreError> {
        let sql = format!("SELECT {LICENSE_COLUMNS} FROM licenses WHERE license_id = $1");
        let row = sqlx::query(&sql).bind(license_id).fetch_optional(&self.readers).await.map_err(map_err)?;
        row.as_ref().map(license_from_row).transpose()
    }

    #[tracing::instrument(name = "store.find_license_by_key_digest", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn find_license_by_key_digest(&self, key_digest: &str) -> Result<Option<License>, StoreError> {
        let sql = format!("SELECT {LICENSE_COLUMNS} FROM licenses WHERE key_digest = $1");
        let row = sqlx::query(&sql).bind(key_digest).fetch_optional(&self.readers).await.map_err(map_err)?;
        row.as_ref().map(license_from_row).transpose()
    }

    #[tracing::instrument(name = "store.list_licenses", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn list_licenses(&self, filter: &LicenseFilter, page: &Page) -> Result<Vec<License>, StoreError> {
        let text = filter.text.as_ref().map(|t| format!("%{}%", t.to_lowercase()));
        let sql = format!(
            "SELECT {LICENSE_COLUMNS} FROM licenses WHERE license_id > $1 \
             AND ($2 IS NULL OR customer_id = $2) \
             AND ($3 IS NULL OR product_code = $3) \
             AND ($4 IS NULL OR status = $4) \
             AND ($5 IS NULL OR LOWER(license_id) LIKE $5 OR LOWER(customer_id) LIKE $5 OR LOWER(notes) LIKE $5) \
             AND ($6 IS NULL OR key_digest = $6) \
             AND ($7 IS NULL OR associated_customer_id = $7) \
             ORDER BY license_id LIMIT $8"
        );
        let rows = sqlx::query(&sql)
            .bind(page.after.clone().unwrap_or_default())
            .bind(filter.customer_id.clone())
            .bind(filter.product_code.clone())
            .bind(filter.status.map(|s| s.as_str().to_owned()))
            .bind(text)
            .bind(filter.key_digest.clone())
            .bind(filter.associated_customer_id.clone())
            .bind(limit(page))
            .fetch_all(&self.readers)
            .await
            .map_err(map_err)?;
        rows.iter().map(license_from_row).collect()
    }

    #[tracing::instrument(name = "store.activation_password_salt", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn activation_password_salt(&self, license_id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT password_salt FROM licenses WHERE license_id = $1")
            .bind(license_id)
            .fetch_optional(&self.readers)
            .await
            .map_err(map_err)?;
        row.as_ref().map(|r| get_str(r, "password_salt")).transpose()
    }

    #[tracing::instrument(name = "store.set_activation_password_salt", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn set_activation_password_salt(
        &self,
        license_id: &str,
        salt: &str,
        audit: AuditRecord,
    ) -> Result<(), StoreError> {
        let q = sqlx::query("UPDATE licenses SET password_salt = $1 WHERE license_id = $2 AND status <> 'retired'")
            .bind(salt.to_owned())
            .bind(license_id.to_owned());
        match self.write_with_audit(q, &audit).await? {
            0 => Err(StoreError::Conflict(format!("license {license_id} is retired or does not exist"))),
            _ => Ok(()),
        }
    }

    #[tracing::instrument(name = "store.update_license", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn update_license(
        &self,
        license_id: &str,
        change: &LicenseChange,
        now: Millis,
        audit: AuditRecord,
        receipt: Option<&Receipt>,
    ) -> Result<License, UpdateError> {
        let mut tx = self.begin().await?;
        let mut license = self
            .lock_license(&mut tx, license_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("license {license_id}")))?;
        let product = sqlx::query("SELECT * FROM products WHERE code = $1")
            .bind(&license.product_code)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        change.apply(&mut license, &product_from_row(&product)?, now)?;
        sqlx::query(
            "UPDATE licenses SET status = $1, seats = $2, allowed_deactivations = $3, modules_json = $4, expires_at = $5, \
             upgrades_until = $6, associated_customer_id = $7, portal_deactivation_counts = $8, updated_at = $9, \
             seat_policy_json = $10, licensee_name = $11, meters_json = $12, grace_period_ms = $13, heartbeat_timeout_ms = $14, \
             policy_id = $15, policy_revision = $16, first_use_json = $17, \
             module_entitlements_json = $18, valid_from = $19, server_grants_json = $20 WHERE license_id = $21",
        )
        .bind(license.status.as_str())
        .bind(i64::from(license.seats))
        .bind(i64::from(license.allowed_deactivations))
        .bind(to_json(&license.modules))
        .bind(license.expires_at)
        .bind(license.upgrades_until)
        .bind(license.associated_customer_id.clone())
        .bind(i64::from(license.portal_deactivation_counts))
        .bind(license.updated_at)
        .bind(to_json(&license.seat_policy))
        .bind(&license.licensee_name)
        .bind(to_json(&license.meters))
        .bind(license.grace_period_ms)
        .bind(license.heartbeat_timeout_ms)
        .bind(license.policy_id.clone())
        .bind(license.policy_revision)
        .bind(license.first_use.as_ref().map(to_json))
        .bind(to_json(&license.module_entitlements))
        .bind(license.valid_from)
        .bind(to_json(&license.server_grants))
        .bind(license_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_audit(&mut tx, &audit, now).await?;
        if let Some(receipt) = receipt {
            insert_receipt(&mut tx, receipt).await?;
        }
        self.notify_license_change(&mut tx, license_id).await?;
        tx.commit().await.map_err(map_err)?;
        self.license_changed(license_id).await;
        Ok(license)
    }

    #[tracing::instrument(name = "store.create_policy", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn create_policy(
        &self,
        policy: &licensing_domain::policy::Policy,
        audit: AuditRecord,
    ) -> Result<(), StoreError> {
        self.insert_policy(policy, audit).await
    }

    #[tracing::instrument(name = "store.get_policy", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn get_policy(&self, policy_id: &str) -> Result<Option<licensing_domain::policy::Policy>, StoreError> {
        self.select_policy(policy_id).await
    }

    #[tracing::instrument(name = "store.list_policies", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn list_policies(&self, product_code: &str) -> Result<Vec<licensing_domain::policy::Policy>, StoreError> {
        self.select_policies(product_code).await
    }

    #[tracing::instrument(name = "store.update_policy_terms", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn update_policy_terms(
        &self,
        policy_id: &str,
        terms: &licensing_domain::policy::LicenseTerms,
        now: Millis,
        audit: AuditRecord,
    ) -> Result<licensing_domain::policy::Policy, StoreError> {
        self.replace_policy_terms(policy_id, terms, now, audit).await
    }

    #[tracing::instrument(name = "store.start_first_use", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn start_first_use(&self, license_id: &str, now: Millis) -> Result<License, StoreError> {
        self.start_first_use_locked(license_id, now).await
    }

    #[tracing::instrument(name = "store.append_audit", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn append_audit(&self, audit: AuditRecord) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        insert_audit(&mut tx, &audit, now()).await?;
        tx.commit().await.map_err(map_err)
    }

    #[tracing::instrument(name = "store.list_audit", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn list_audit(&self, subject: &str, page: &Page) -> Result<Vec<AuditEvent>, StoreError> {
        let after: i64 = page.after.as_deref().and_then(|a| a.parse().ok()).unwrap_or(0);
        let rows =
            sqlx::query("SELECT * FROM audit_events WHERE subject = $1 AND sequence > $2 ORDER BY sequence LIMIT $3")
                .bind(subject)
                .bind(after)
                .bind(limit(page))
                .fetch_all(&self.readers)
                .await
                .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                Ok(AuditEvent {
                    sequence: get_i64(row, "sequence")?,
                    occurred_at: get_i64(row, "occurred_at")?,
                    actor: get_str(row, "actor")?,
                    action: get_str(row, "action")?,
                    subject: get_str(row, "subject")?,
                    details_json: get_str(row, "details_json")?,
                })
            })
            .collect()
    }

    #[tracing::instrument(name = "store.count_admin_tokens", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn count_admin_tokens(&self) -> Result<i64, StoreError> {
        let row =
            sqlx::query("SELECT COUNT(*) AS n FROM admin_tokens").fetch_one(&self.readers).await.map_err(map_err)?;
        get_i64(&row, "n")
    }

    #[tracing::instrument(name = "store.insert_admin_token", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn insert_admin_token(&self, token_id: &str, digest: &str, now: Millis) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO admin_tokens (token_id, digest, created_at) VALUES ($1, $2, $3) ON CONFLICT (digest) DO NOTHING")
            .bind(token_id)
            .bind(digest)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    #[tracing::instrument(name = "store.find_admin_token", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn find_admin_token(&self, digest: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT token_id FROM admin_tokens WHERE digest = $1")
            .bind(digest)
            .fetch_optional(&self.readers)
            .await
            .map_err(map_err)?;
        row.as_ref().map(|r| get_str(r, "token_id")).transpose()
    }
}
