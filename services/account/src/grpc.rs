//! The tonic adapters of the Account service: authenticate, convert, delegate, convert back.

use crate::catalog::{Catalog, IssueLicense, Payment};
use crate::portal::{ContactForm, Portal};
use crate::AccountError;
use licensing_activation::{Activations, ServerRequestOutcome};
use licensing_domain::change::LicenseChange;
use licensing_domain::meter::usage_csv;
use licensing_domain::model::LicenseFilter;
use licensing_domain::model::{Activation, ActivationEvent};
use licensing_domain::server_usage::ServerUsageReport;
use licensing_proto::account::v1 as pb;
use licensing_proto::account::v1::account_service_server::{AccountService, AccountServiceServer};
use licensing_proto::account::v1::admin_service_server::{AdminService, AdminServiceServer};
use licensing_proto::seat::v1 as seat_pb;
use licensing_runtime::auth::{bearer_token, caller_address};
use licensing_runtime::auth::{AdminAuth, AdminId};
use licensing_runtime::convert::proto as conv;
use licensing_runtime::convert::seat as conv_seat;
use licensing_runtime::convert::{from_duration, from_opt_timestamp, from_timestamp, FieldError};
use licensing_runtime::convert::{opt_timestamp, to_timestamp};
use licensing_runtime::status::OrStatus;
use tonic::{Request, Response, Status};

/// The vendor's admin API.
#[derive(Clone)]
pub struct AdminApi {
    catalog: Catalog,
    auth: AdminAuth,
    /// Answers the request files of air-gapped on-premises servers (server licenses).
    servers: Activations,
}

impl AdminApi {
    /// The adapter over `catalog`, accepting calls with an admin token `auth` knows; `servers`
    /// answers on-premises servers' request files.
    pub fn new(catalog: Catalog, auth: AdminAuth, servers: Activations) -> Self {
        Self { catalog, auth, servers }
    }

    /// The tonic service, decoding and encoding messages of up to `max_message_bytes`.
    pub fn into_server(self, max_message_bytes: usize) -> AdminServiceServer<Self> {
        AdminServiceServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }

    async fn admin<T>(&self, request: &Request<T>) -> Result<AdminId, Status> {
        self.auth.authorize(request.metadata()).await.or_status()
    }

    async fn change(
        &self,
        request: Request<impl LicenseTarget>,
        change: LicenseChange,
        reason: &str,
    ) -> Result<licensing_proto::common::v1::License, Status> {
        self.change_paid(request, change, reason, None).await
    }

    async fn change_paid(
        &self,
        request: Request<impl LicenseTarget>,
        change: LicenseChange,
        reason: &str,
        payment: Option<Payment>,
    ) -> Result<licensing_proto::common::v1::License, Status> {
        let admin = self.admin(&request).await?;
        let license_id = request.get_ref().license_id();
        let license =
            self.catalog.change_license_paid(&admin.actor(), license_id, change, reason, payment).await.or_status()?;
        Ok(conv::license(&license))
    }
}

/// Requests that name one license.
trait LicenseTarget {
    fn license_id(&self) -> &str;
}

macro_rules! license_target {
    ($($t:ty),*) => { $(impl LicenseTarget for $t { fn license_id(&self) -> &str { &self.license_id } })* };
}
license_target!(
    pb::SetLicenseMeterRequest,
    pb::RemoveLicenseMeterRequest,
    pb::SuspendLicenseRequest,
    pb::ReinstateLicenseRequest,
    pb::RenewLicenseRequest,
    pb::SetLicenseSeatsRequest,
    pb::SetAllowedDeactivationsRequest,
    pb::AddLicenseModulesRequest,
    pb::RemoveLicenseModulesRequest,
    pb::ExtendUpgradePeriodRequest,
    pb::SetPortalDeactivationPolicyRequest,
    pb::SetLicenseGracePeriodRequest,
    pb::SetHeartbeatTimeoutRequest,
    pb::SetModuleEntitlementRequest,
    pb::ReturnLicenseRequest,
    pb::SetServerGrantsRequest
);

fn invalid(e: FieldError) -> Status {
    licensing_runtime::status::to_status(&AccountError::invalid(e.field, e.message))
}

fn required_timestamp(field: &'static str, ts: Option<&prost_types::Timestamp>) -> Result<i64, Status> {
    match ts {
        Some(t) => from_timestamp(field, t).map_err(invalid),
        None => Err(licensing_runtime::status::to_status(&AccountError::invalid(field, "is required"))),
    }
}

/// A heartbeat timeout (ms) from a request; unset is `None` (no heartbeats required).
fn heartbeat_timeout(d: Option<&prost_types::Duration>) -> Result<Option<i64>, Status> {
    d.map(|d| from_duration("heartbeat_timeout", Some(d))).transpose().map_err(invalid)
}

fn payment(p: Option<pb::Payment>) -> Option<Payment> {
    p.map(|p| Payment { amount_minor: p.amount_minor, currency: p.currency, recurring_months: p.recurring_months })
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_product(
        &self,
        request: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::CreateProductResponse>, Status> {
        let admin = self.admin(&request).await?;
        let r = request.into_inner();
        let modules = r.modules.iter().map(conv::module_from_proto).collect();
        let product = self.catalog.create_product(&admin.actor(), &r.code, &r.name, modules).await.or_status()?;
        Ok(Response::new(pb::CreateProductResponse { product: Some(conv::product(&product)) }))
    }

    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::GetProductResponse>, Status> {
        self.admin(&request).await?;
        let product = self.catalog.get_product(&request.get_ref().code).await.or_status()?;
        Ok(Response::new(pb::GetProductResponse { product: Some(conv::product(&product)) }))
    }

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        self.admin(&request).await?;
        let page = conv::page("page", request.get_ref().page.as_ref()).map_err(invalid)?;
        let products = self.catalog.list_products(&page).await.or_status()?;
        Ok(Response::new(pb::ListProductsResponse {
            next_page_token: conv::next_page_token(&products, &page, |p| p.code.clone()),
            products: products.iter().map(conv::product).collect(),
        }))
    }

    async fn add_product_version(
        &self,
        request: Request<pb::AddProductVersionRequest>,
    ) -> Result<Response<pb::AddProductVersionResponse>, Status> {
        let admin = self.admin(&request).await?;
        let r = request.into_inner();
        let released_at = from_opt_timestamp("released_at", r.released_at.as_ref()).map_err(invalid)?;
        let product = self
            .catalog
            .add_product_version(&admin.actor(), &r.product_code, &r.version, released_at)
            .await
            .or_status()?;
        Ok(Response::new(pb::AddProductVersionResponse { product: Some(conv::product(&product)) }))
    }

    async fn add_product_module(
        &self,
        request: Request<pb::AddProductModuleRequest>,
    ) -> Result<Response<pb::AddProductModuleResponse>, Status> {
        let admin = self.admin(&request).await?;
        let r = request.into_inner();
        let module = r
            .module
            .as_ref()
            .map(conv::module_from_proto)
            .ok_or_else(|| invalid(FieldError::new("module", "is required (code and name)")))?;
        let product = self.catalog.add_product_module(&admin.actor(), &r.product_code, module).await.or_status()?;
        Ok(Response::new(pb::AddProductModuleResponse { product: Some(conv::product(&product)) }))
    }

    async fn create_customer(
        &self,
        request: Request<pb::CreateCustomerRequest>,
    ) -> Result<Response<pb::CreateCustomerResponse>, Status> {
        let admin = self.admin(&request).await?;
        let r = request.into_inner();
        let password = Some(r.password).filter(|p| !p.is_empty());
        let customer = self
            .catalog
            .create_customer(&admin.actor(), &r.company_name, &r.contact_email, password)
            .await
            .or_status()?;
        Ok(Response::new(pb::CreateCustomerResponse { customer: Some(conv::customer(&customer)) }))
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::GetCustomerResponse>, Status> {
        self.admin(&request).await?;
        let customer = self.catalog.get_customer(&request.get_ref().customer_id).await.or_status()?;
        Ok(Response::new(pb::GetCustomerResponse { customer: Some(conv::customer(&customer)) }))
    }

    async fn list_customers(
        &self,
        request: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<pb::ListCustomersResponse>, Status> {
        self.admin(&request).await?;
        let r = request.get_ref();
        let page = conv::page("page", r.page.as_ref()).map_err(invalid)?;
        let customers = self.catalog.list_customers(&r.query, &page).await.or_status()?;
        Ok(Response::new(pb::ListCustomersResponse {
            next_page_token: conv::next_page_token(&customers, &page, |c| c.customer_id.clone()),
            customers: customers.iter().map(conv::customer).collect(),
        }))
    }

    async fn set_customer_password(
        &self,
        request: Request<pb::SetCustomerPasswordRequest>,
    ) -> Result<Response<pb::SetCustomerPasswordResponse>, Status> {
        let admin = self.admin(&request).await?;
        let r = request.into_inner();
        self.catalog.set_customer_password(&admin.actor(), &r.customer_id, r.password).await.or_status()?;
        Ok(Response::new(pb::SetCustomerPasswordResponse {}))
    }

    async fn issue_license(
        &self,
        request: Request<pb::IssueLicenseRequest>,
    ) -> Result<Response<pb::IssueLicenseResponse>, Status> {
        let admin = self.admin(&request).await?;
        let r = request.into_inner();
        let input = IssueLicense {
            payment: payment(r.payment),
            kind: conv::kind_from_proto(r.kind),
            valid_from: from_opt_timestamp("valid_from", r.valid_from.as_ref()).map_err(invalid)?,
            expires_at: from_opt_timestamp("expires_at", r.expires_at.as_ref()).map_err(invalid)?,
            upgrades_until: from_opt_timestamp("upgrades_until", r.upgrades_until.as_ref()).map_err(invalid)?,
            grace_period_ms: from_duration("grace_period", r.grace_period.as_ref()).map_err(invalid)?,
            product_code: r.product_code,
            customer_id: r.customer_id,
            seats: r.seats,
            allowed_deactivations: r.allowed_deactivations,
            modules: r.modules,
            associate: r.associate,
            notes: r.notes,
            meters: r
                .meters
                .iter()
                .map(|m| conv::meter_from_proto("meters", Some(m)))
                .collect::<Result<_, _>>()
                .map_err(invalid)?,
            heartbeat_timeout_ms: heartbeat_timeout(r.heartbeat_timeout.as_ref())?,
            policy_id: (!r.policy_id.is_empty()).then_some(r.policy_id),
            module_entitlements: r
                .module_entitlements
                .iter()
                .map(|e| conv::module_entitlement_from_proto("module_entitlements.expires_at", e))
                .collect::<Result<_, _>>()
                .map_err(invalid)?,
            server_grants: r.server_grants.into_iter().map(conv::server_grant_from_proto).collect(),
        };
        let issued = self.catalog.issue_license(&admin.actor(), input).await.or_status()?;
        Ok(Response::new(pb::IssueLicenseResponse {
            license: Some(conv::license(&issued.license)),
            license_key: issued.license_key.to_string(),
            activation_password: issued.activation_password,
        }))
    }

    async fn get_license(
        &self,
        request: Request<pb::GetLicenseRequest>,
    ) -> Result<Response<pb::GetLicenseResponse>, Status> {
        self.admin(&request).await?;
        let license = self.catalog.get_license(&request.get_ref().license_id).await.or_status()?;
        let servers = self.catalog.activated_servers(&license).await.or_status()?;
        Ok(Response::new(pb::GetLicenseResponse {
            license: Some(conv::license(&license)),
            servers: servers.iter().map(activated_server).collect(),
        }))
    }

    async fn list_licenses(
        &self,
        request: Request<pb::ListLicensesRequest>,
    ) -> Result<Response<pb::ListLicensesResponse>, Status> {
        self.admin(&request).await?;
        let r = request.into_inner();
        let page = conv::page("page", r.page.as_ref()).map_err(invalid)?;
        let status = match r.status {
            0 => None,
            n => Some(
                conv::status_from_proto(n)
                    .ok_or_else(|| invalid(FieldError::new("status", format!("{n} is not a license status"))))?,
            ),
        };
        let filter = LicenseFilter {
            customer_id: Some(r.customer_id).filter(|c| !c.is_empty()),
            product_code: Some(r.product_code).filter(|c| !c.is_empty()),
            status,
            ..Default::default()
        };
        let licenses = self.catalog.list_licenses(filter, &r.query, &page).await.or_status()?;
        Ok(Response::new(pb::ListLicensesResponse {
            next_page_token: conv::next_page_token(&licenses, &page, |l| l.license_id.clone()),
            licenses: licenses.iter().map(conv::license).collect(),
        }))
    }

    async fn suspend_license(
        &self,
        request: Request<pb::SuspendLicenseRequest>,
    ) -> Result<Response<pb::SuspendLicenseResponse>, Status> {
        let reason = request.get_ref().reason.clone();
        let license = self.change(request, LicenseChange::Suspend, &reason).await?;
        Ok(Response::new(pb::SuspendLicenseResponse { license: Some(license) }))
    }

    async fn reinstate_license(
        &self,
        request: Request<pb::ReinstateLicenseRequest>,
    ) -> Result<Response<pb::ReinstateLicenseResponse>, Status> {
        let license = self.change(request, LicenseChange::Reinstate, "").await?;
        Ok(Response::new(pb::ReinstateLicenseResponse { license: Some(license) }))
    }

    async fn renew_license(
        &self,
        request: Request<pb::RenewLicenseRequest>,
    ) -> Result<Response<pb::RenewLicenseResponse>, Status> {
        let expires_at = required_timestamp("expires_at", request.get_ref().expires_at.as_ref())?;
        let paid = payment(request.get_ref().payment.clone());
        let license = self.change_paid(request, LicenseChange::Renew { expires_at }, "", paid).await?;
        Ok(Response::new(pb::RenewLicenseResponse { license: Some(license) }))
    }

    async fn set_license_seats(
        &self,
        request: Request<pb::SetLicenseSeatsRequest>,
    ) -> Result<Response<pb::SetLicenseSeatsResponse>, Status> {
        let seats = request.get_ref().seats;
        let license = self.change(request, LicenseChange::SetSeats(seats), "").await?;
        Ok(Response::new(pb::SetLicenseSeatsResponse { license: Some(license) }))
    }

    async fn set_server_grants(
        &self,
        request: Request<pb::SetServerGrantsRequest>,
    ) -> Result<Response<pb::SetServerGrantsResponse>, Status> {
        let grants = request.get_ref().server_grants.iter().cloned().map(conv::server_grant_from_proto).collect();
        let license = self.change(request, LicenseChange::SetServerGrants(grants), "").await?;
        Ok(Response::new(pb::SetServerGrantsResponse { license: Some(license) }))
    }

    async fn set_allowed_deactivations(
        &self,
        request: Request<pb::SetAllowedDeactivationsRequest>,
    ) -> Result<Response<pb::SetAllowedDeactivationsResponse>, Status> {
        let n = request.get_ref().allowed_deactivations;
        let license = self.change(request, LicenseChange::SetAllowedDeactivations(n), "").await?;
        Ok(Response::new(pb::SetAllowedDeactivationsResponse { license: Some(license) }))
    }

    async fn add_license_modules(
        &self,
        request: Request<pb::AddLicenseModulesRequest>,
    ) -> Result<Response<pb::AddLicenseModulesResponse>, Status> {
        let modules = request.get_ref().modules.clone();
        let paid = payment(request.get_ref().payment.clone());
        let license = self.change_paid(request, LicenseChange::AddModules(modules), "", paid).await?;
        Ok(Response::new(pb::AddLicenseModulesResponse { license: Some(license) }))
    }

    async fn remove_license_modules(
        &self,
        request: Request<pb::RemoveLicenseModulesRequest>,
    ) -> Result<Response<pb::RemoveLicenseModulesResponse>, Status> {
        let modules = request.get_ref().modules.clone();
        let license = self.change(request, LicenseChange::RemoveModules(modules), "").await?;
        Ok(Response::new(pb::RemoveLicenseModulesResponse { license: Some(license) }))
    }

    async fn extend_upgrade_period(
        &self,
        request: Request<pb::ExtendUpgradePeriodRequest>,
    ) -> Result<Response<pb::ExtendUpgradePeriodResponse>, Status> {
        let upgrades_until = required_timestamp("upgrades_until", request.get_ref().upgrades_until.as_ref())?;
        let paid = payment(request.get_ref().payment.clone());
        let license =
            self.change_paid(request, LicenseChange::ExtendUpgradePeriod { upgrades_until }, "", paid).await?;
        Ok(Response::new(pb::ExtendUpgradePeriodResponse { license: Some(license) }))
    }

    async fn set_heartbeat_timeout(
        &self,
        request: Request<pb::SetHeartbeatTimeoutRequest>,
    ) -> Result<Response<pb::SetHeartbeatTimeoutResponse>, Status> {
        let timeout = heartbeat_timeout(request.get_ref().heartbeat_timeout.as_ref());
        if timeout.is_err() {
            // Callers without an admin token hear only that.
            self.admin(&request).await?;
        }
        let license = self.change(request, LicenseChange::SetHeartbeatTimeout(timeout?), "").await?;
        Ok(Response::new(pb::SetHeartbeatTimeoutResponse { license: Some(license) }))
    }

    async fn set_portal_deactivation_policy(
        &self,
        request: Request<pb::SetPortalDeactivationPolicyRequest>,
    ) -> Result<Response<pb::SetPortalDeactivationPolicyResponse>, Status> {
        let counts = request.get_ref().portal_deactivation_counts;
        let license = self.change(request, LicenseChange::SetPortalDeactivationCounts(counts), "").await?;
        Ok(Response::new(pb::SetPortalDeactivationPolicyResponse { license: Some(license) }))
    }

    async fn set_license_grace_period(
        &self,
        request: Request<pb::SetLicenseGracePeriodRequest>,
    ) -> Result<Response<pb::SetLicenseGracePeriodResponse>, Status> {
        let grace_period_ms =
            from_duration("grace_period", request.get_ref().grace_period.as_ref()).map_err(invalid)?;
        let license = self.change(request, LicenseChange::SetGracePeriod(grace_period_ms), "").await?;
        Ok(Response::new(pb::SetLicenseGracePeriodResponse { license: Some(license) }))
    }

    async fn set_module_entitlement(
        &self,
        request: Request<pb::SetModuleEntitlementRequest>,
    ) -> Result<Response<pb::SetModuleEntitlementResponse>, Status> {
        let r = request.get_ref();
        let expires_at = from_opt_timestamp("expires_at", r.expires_at.as_ref()).map_err(invalid)?;
        let change = LicenseChange::SetModuleEntitlement {
            module: r.module.clone(),
            value: Some(r.value.clone()).filter(|v| !v.is_empty()),
            expires_at,
        };
        let license = self.change(request, change, "").await?;
        Ok(Response::new(pb::SetModuleEntitlementResponse { license: Some(license) }))
    }

    async fn return_license(
        &self,
        request: Request<pb::ReturnLicenseRequest>,
    ) -> Result<Response<pb::ReturnLicenseResponse>, Status> {
        let admin = self.admin(&request).await?;
        let r = request.get_ref();
        let license = self.catalog.return_license(&admin.actor(), &r.license_id, &r.reason).await.or_status()?;
        Ok(Response::new(pb::ReturnLicenseResponse { license: Some(conv::license(&license)) }))
    }

    async fn associate_license(
        &self,
        request: Request<pb::AdminServiceAssociateLicenseRequest>,
    ) -> Result<Response<pb::AdminServiceAssociateLicenseResponse>, Status> {
        let admin = self.admin(&request).await?;
        let r = request.get_ref();
        let license = self.catalog.associate(&admin.actor(), &r.license_id, &r.customer_id).await.or_status()?;
        Ok(Response::new(pb::AdminServiceAssociateLicenseResponse { license: Some(conv::license(&license)) }))
    }

    async fn process_server_request(
        &self,
        request: Request<pb::ProcessServerRequestRequest>,
    ) -> Result<Response<pb::ProcessServerRequestResponse>, Status> {
        let admin = self.admin(&request).await?;
        let text = &request.get_ref().request_file;
        let outcome = self.servers.process_server_request(&admin.actor(), text).await.or_status()?;
        Ok(Response::new(match outcome {
            ServerRequestOutcome::Activated(server) => pb::ProcessServerRequestResponse {
                license: Some(conv::license(&server.license)),
                installation_id: server.activation.installation_id,
                serial: server.payload.serial,
                server_license_file: server.file,
                returned: false,
            },
            ServerRequestOutcome::Returned(returned) => pb::ProcessServerRequestResponse {
                license: Some(conv::license(&returned.license)),
                installation_id: returned.activation.installation_id,
                serial: returned.serial,
                server_license_file: String::new(),
                returned: true,
            },
        }))
    }

    async fn list_server_usage_reports(
        &self,
        request: Request<pb::ListServerUsageReportsRequest>,
    ) -> Result<Response<pb::ListServerUsageReportsResponse>, Status> {
        self.admin(&request).await?;
        let r = request.get_ref();
        let page = conv::page("page", r.page.as_ref()).map_err(invalid)?;
        let reports = self.catalog.server_usage_reports(&r.license_id, &page).await.or_status()?;
        Ok(Response::new(pb::ListServerUsageReportsResponse {
            next_page_token: conv::next_page_token(&reports, &page, |r| r.sequence.to_string()),
            reports: reports.iter().map(server_usage_report).collect(),
        }))
    }

    async fn get_activation_history(
        &self,
        request: Request<pb::GetActivationHistoryRequest>,
    ) -> Result<Response<pb::GetActivationHistoryResponse>, Status> {
        self.admin(&request).await?;
        let (installations, history) =
            self.catalog.activation_history(&request.get_ref().license_id).await.or_status()?;
        Ok(Response::new(pb::GetActivationHistoryResponse {
            installations: installations.iter().map(installation).collect(),
            history: history.iter().map(history_entry).collect(),
        }))
    }

    async fn set_license_meter(
        &self,
        request: Request<pb::SetLicenseMeterRequest>,
    ) -> Result<Response<pb::SetLicenseMeterResponse>, Status> {
        let meter = conv::meter_from_proto("meter", request.get_ref().meter.as_ref()).map_err(invalid)?;
        let license = self.change(request, LicenseChange::SetMeter(meter), "").await?;
        Ok(Response::new(pb::SetLicenseMeterResponse { license: Some(license) }))
    }

    async fn remove_license_meter(
        &self,
        request: Request<pb::RemoveLicenseMeterRequest>,
    ) -> Result<Response<pb::RemoveLicenseMeterResponse>, Status> {
        let code = request.get_ref().code.clone();
        let license = self.change(request, LicenseChange::RemoveMeter(code), "").await?;
        Ok(Response::new(pb::RemoveLicenseMeterResponse { license: Some(license) }))
    }

    async fn get_license_meter_usage(
        &self,
        request: Request<pb::GetLicenseMeterUsageRequest>,
    ) -> Result<Response<pb::GetLicenseMeterUsageResponse>, Status> {
        self.admin(&request).await?;
        let r = request.get_ref();
        let (current, history) = self.catalog.meter_usage(&r.license_id).await.or_status()?;
        Ok(Response::new(pb::GetLicenseMeterUsageResponse {
            current: current.iter().map(conv::meter_usage).collect(),
            csv: if r.as_csv { usage_csv(&history) } else { String::new() },
            history: history.iter().map(conv::meter_usage).collect(),
        }))
    }

    async fn create_policy(
        &self,
        request: Request<pb::CreatePolicyRequest>,
    ) -> Result<Response<pb::CreatePolicyResponse>, Status> {
        let admin = self.admin(&request).await?;
        let r = request.get_ref();
        let terms = conv::terms_from_proto(r.terms.as_ref()).map_err(invalid)?;
        let policy = self.catalog.create_policy(&admin.actor(), &r.product_code, &r.name, terms).await.or_status()?;
        Ok(Response::new(pb::CreatePolicyResponse { policy: Some(conv::policy(&policy)) }))
    }

    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        self.admin(&request).await?;
        let policy = self.catalog.get_policy(&request.get_ref().policy_id).await.or_status()?;
        Ok(Response::new(pb::GetPolicyResponse { policy: Some(conv::policy(&policy)) }))
    }

    async fn list_policies(
        &self,
        request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        self.admin(&request).await?;
        let policies = self.catalog.list_policies(&request.get_ref().product_code).await.or_status()?;
        Ok(Response::new(pb::ListPoliciesResponse { policies: policies.iter().map(conv::policy).collect() }))
    }

    async fn update_policy(
        &self,
        request: Request<pb::UpdatePolicyRequest>,
    ) -> Result<Response<pb::UpdatePolicyResponse>, Status> {
        let admin = self.admin(&request).await?;
        let r = request.get_ref();
        let terms = conv::terms_from_proto(r.terms.as_ref()).map_err(invalid)?;
        let policy = self.catalog.update_policy(&admin.actor(), &r.policy_id, terms).await.or_status()?;
        Ok(Response::new(pb::UpdatePolicyResponse { policy: Some(conv::policy(&policy)) }))
    }

    async fn apply_policy(
        &self,
        request: Request<pb::ApplyPolicyRequest>,
    ) -> Result<Response<pb::ApplyPolicyResponse>, Status> {
        let admin = self.admin(&request).await?;
        let r = request.get_ref();
        let licenses = self.catalog.apply_policy(&admin.actor(), &r.policy_id, &r.license_ids).await.or_status()?;
        Ok(Response::new(pb::ApplyPolicyResponse { licenses: licenses.iter().map(conv::license).collect() }))
    }

    async fn convert_trial(
        &self,
        request: Request<pb::ConvertTrialRequest>,
    ) -> Result<Response<pb::ConvertTrialResponse>, Status> {
        let admin = self.admin(&request).await?;
        let r = request.get_ref();
        let license = self
            .catalog
            .convert_trial(&admin.actor(), &r.license_id, &r.customer_id, &r.policy_id, r.associate)
            .await
            .or_status()?;
        Ok(Response::new(pb::ConvertTrialResponse { license: Some(conv::license(&license)) }))
    }

    async fn get_trial_stats(
        &self,
        request: Request<pb::GetTrialStatsRequest>,
    ) -> Result<Response<pb::GetTrialStatsResponse>, Status> {
        self.admin(&request).await?;
        let stats = self.catalog.trial_stats(&request.get_ref().product_code).await.or_status()?;
        Ok(Response::new(pb::GetTrialStatsResponse {
            started: stats.started,
            active: stats.active,
            expired: stats.expired,
            converted: stats.converted,
        }))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        self.admin(&request).await?;
        let r = request.get_ref();
        let page = conv::page("page", r.page.as_ref()).map_err(invalid)?;
        let events = self.catalog.list_audit(&r.subject, &page).await.or_status()?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            next_page_token: conv::next_page_token(&events, &page, |e| e.sequence.to_string()),
            events: events.iter().map(conv::audit_event).collect(),
        }))
    }
}

/// The customer portal.
#[derive(Clone)]
pub struct AccountApi {
    portal: Portal,
}

impl AccountApi {
    /// The adapter over `portal`.
    pub fn new(portal: Portal) -> Self {
        Self { portal }
    }

    /// The tonic service, decoding and encoding messages of up to `max_message_bytes`.
    pub fn into_server(self, max_message_bytes: usize) -> AccountServiceServer<Self> {
        AccountServiceServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }

    /// The customer whose session token the request carries.
    async fn me<T>(&self, request: &Request<T>) -> Result<String, Status> {
        self.portal.authenticate(bearer_token(request.metadata())).await.or_status()
    }
}

fn history_entry(e: &ActivationEvent) -> pb::ActivationHistoryEntry {
    pb::ActivationHistoryEntry {
        occurred_at: Some(to_timestamp(e.occurred_at)),
        action: e.action.clone(),
        installation_id: e.installation_id.clone(),
        machine_name: e.machine_name.clone(),
        fingerprint_digest: e.fingerprint_digest.clone(),
        outcome: e.outcome.clone(),
    }
}

/// A server activated on a server license.
fn activated_server(a: &Activation) -> pb::ActivatedServer {
    pb::ActivatedServer {
        installation_id: a.installation_id.clone(),
        server_name: a.machine_name.clone(),
        serial: a.server_serial,
        activated_at: Some(to_timestamp(a.activated_at)),
        last_seen_at: Some(to_timestamp(a.last_seen_at)),
    }
}

/// A stored server usage report.
fn server_usage_report(r: &ServerUsageReport) -> pb::ServerUsageReport {
    pb::ServerUsageReport {
        report_id: r.report_id.clone(),
        license_id: r.license_id.clone(),
        installation_id: r.installation_id.clone(),
        serial: r.serial,
        period_start: Some(to_timestamp(r.period_start)),
        period_end: Some(to_timestamp(r.period_end)),
        grants: r
            .grants
            .iter()
            .map(|g| licensing_proto::activation::v1::ServerGrantUsage {
                product_code: g.product_code.clone(),
                feature: g.feature.clone(),
                kind: g.kind.as_str().to_owned(),
                granted: g.granted,
                peak_in_use: g.peak_in_use,
                checkouts: g.checkouts,
                denials: g.denials,
                seat_seconds: g.seat_seconds,
            })
            .collect(),
        received_at: Some(to_timestamp(r.received_at)),
    }
}

fn installation(a: &Activation) -> pb::Installation {
    pb::Installation {
        installation_id: a.installation_id.clone(),
        machine_name: a.machine_name.clone(),
        platform: a.platform.clone(),
        activated_at: Some(to_timestamp(a.activated_at)),
        last_seen_at: Some(to_timestamp(a.last_seen_at)),
        deactivated_at: opt_timestamp(a.deactivated_at),
        active: a.deactivated_at.is_none(),
    }
}

#[tonic::async_trait]
impl AccountService for AccountApi {
    async fn login(&self, request: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let client = caller_address(&request);
        let r = request.into_inner();
        let (token, expires_at, customer) = self.portal.login(&r.login, &r.password, &client).await.or_status()?;
        Ok(Response::new(pb::LoginResponse {
            session_token: token,
            expires_at: Some(to_timestamp(expires_at)),
            customer: Some(conv::customer(&customer)),
        }))
    }

    async fn logout(&self, request: Request<pb::LogoutRequest>) -> Result<Response<pb::LogoutResponse>, Status> {
        let me = self.me(&request).await?;
        let token = bearer_token(request.metadata()).unwrap_or_default().to_owned();
        self.portal.logout(&me, &token).await.or_status()?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn request_password_reset(
        &self,
        request: Request<pb::RequestPasswordResetRequest>,
    ) -> Result<Response<pb::RequestPasswordResetResponse>, Status> {
        self.portal.request_password_reset(&request.get_ref().login).or_status()?;
        Ok(Response::new(pb::RequestPasswordResetResponse {}))
    }

    async fn reset_password(
        &self,
        request: Request<pb::ResetPasswordRequest>,
    ) -> Result<Response<pb::ResetPasswordResponse>, Status> {
        let r = request.into_inner();
        self.portal.reset_password(&r.reset_token, r.new_password).await.or_status()?;
        Ok(Response::new(pb::ResetPasswordResponse {}))
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        let me = self.me(&request).await?;
        let customer = self.portal.account(&me).await.or_status()?;
        Ok(Response::new(pb::GetAccountResponse { customer: Some(conv::customer(&customer)) }))
    }

    async fn list_my_licenses(
        &self,
        request: Request<pb::ListMyLicensesRequest>,
    ) -> Result<Response<pb::ListMyLicensesResponse>, Status> {
        let me = self.me(&request).await?;
        let page = conv::page("page", request.get_ref().page.as_ref()).map_err(invalid)?;
        let licenses = self.portal.licenses(&me, &page).await.or_status()?;
        Ok(Response::new(pb::ListMyLicensesResponse {
            next_page_token: conv::next_page_token(&licenses, &page, |l| l.license_id.clone()),
            licenses: licenses.iter().map(conv::customer_license).collect(),
        }))
    }

    async fn get_my_license(
        &self,
        request: Request<pb::GetMyLicenseRequest>,
    ) -> Result<Response<pb::GetMyLicenseResponse>, Status> {
        let me = self.me(&request).await?;
        let r = request.get_ref();
        let installations_page = conv::page("installations_page", r.installations_page.as_ref()).map_err(invalid)?;
        let history_page = conv::page("history_page", r.history_page.as_ref()).map_err(invalid)?;
        let d =
            self.portal.license_details(&me, &r.license_id, &installations_page, &history_page).await.or_status()?;
        Ok(Response::new(pb::GetMyLicenseResponse {
            license: Some(conv::customer_license(&d.license)),
            installations: d.installations.iter().map(installation).collect(),
            history: d.history.iter().map(history_entry).collect(),
            installations_next_page_token: d.installations_next.map(|c| c.token()).unwrap_or_default(),
            history_next_page_token: d.history_next.map(|s| s.to_string()).unwrap_or_default(),
            servers: d.server.servers.iter().map(activated_server).collect(),
            server_usage_reports: d.server.reports.iter().map(server_usage_report).collect(),
        }))
    }

    async fn list_my_leases(
        &self,
        request: Request<pb::ListMyLeasesRequest>,
    ) -> Result<Response<pb::ListMyLeasesResponse>, Status> {
        let me = self.me(&request).await?;
        let leases = self.portal.leases(&me, &request.get_ref().license_id).await.or_status()?;
        Ok(Response::new(pb::ListMyLeasesResponse { leases: leases.iter().map(conv::lease).collect() }))
    }

    async fn get_my_seat_policy(
        &self,
        request: Request<pb::GetMySeatPolicyRequest>,
    ) -> Result<Response<pb::GetMySeatPolicyResponse>, Status> {
        let me = self.me(&request).await?;
        let policy = self.portal.seat_policy(&me, &request.get_ref().license_id).await.or_status()?;
        Ok(Response::new(pb::GetMySeatPolicyResponse { policy: Some(conv_seat::policy(&policy)) }))
    }

    async fn get_my_usage_report(
        &self,
        request: Request<pb::GetMyUsageReportRequest>,
    ) -> Result<Response<pb::GetMyUsageReportResponse>, Status> {
        let me = self.me(&request).await?;
        let r = request.get_ref();
        let from = from_opt_timestamp("from", r.from.as_ref()).map_err(invalid)?;
        let to = from_opt_timestamp("to", r.to.as_ref()).map_err(invalid)?;
        let report = self.portal.usage_report(&me, &r.license_id, from, to).await.or_status()?;
        Ok(Response::new(my_usage_report(conv_seat::usage_report(&report, r.as_csv))))
    }

    async fn deactivate_installation(
        &self,
        request: Request<pb::DeactivateInstallationRequest>,
    ) -> Result<Response<pb::DeactivateInstallationResponse>, Status> {
        let me = self.me(&request).await?;
        let r = request.get_ref();
        let (a, license) =
            self.portal.deactivate_installation(&me, &r.license_id, &r.installation_id).await.or_status()?;
        Ok(Response::new(pb::DeactivateInstallationResponse {
            installation: Some(installation(&a)),
            deactivations_left: license.deactivations_left(),
        }))
    }

    async fn get_activation_password(
        &self,
        request: Request<pb::GetActivationPasswordRequest>,
    ) -> Result<Response<pb::GetActivationPasswordResponse>, Status> {
        let me = self.me(&request).await?;
        let password = self.portal.activation_password(&me, &request.get_ref().license_id).await.or_status()?;
        Ok(Response::new(pb::GetActivationPasswordResponse { activation_password: password }))
    }

    async fn regenerate_activation_password(
        &self,
        request: Request<pb::RegenerateActivationPasswordRequest>,
    ) -> Result<Response<pb::RegenerateActivationPasswordResponse>, Status> {
        let me = self.me(&request).await?;
        let password =
            self.portal.regenerate_activation_password(&me, &request.get_ref().license_id).await.or_status()?;
        Ok(Response::new(pb::RegenerateActivationPasswordResponse { activation_password: password }))
    }

    async fn return_concurrent_license(
        &self,
        request: Request<pb::ReturnConcurrentLicenseRequest>,
    ) -> Result<Response<pb::ReturnConcurrentLicenseResponse>, Status> {
        let me = self.me(&request).await?;
        let r = request.get_ref();
        let returned =
            self.portal.return_concurrent_license(&me, &r.license_id, r.new_seats, &r.split).await.or_status()?;
        let reissued: Vec<pb::ReissuedLicense> = returned
            .reissued
            .iter()
            .map(|n| pb::ReissuedLicense {
                license: Some(conv::customer_license(&n.license)),
                license_key: n.license_key.to_string(),
                activation_password: n.activation_password.clone(),
            })
            .collect();
        let first = reissued.first().cloned().unwrap_or_default();
        Ok(Response::new(pb::ReturnConcurrentLicenseResponse {
            retired: Some(conv::customer_license(&returned.retired)),
            replacement: first.license,
            license_key: first.license_key,
            activation_password: first.activation_password,
            reissued,
        }))
    }

    async fn associate_license(
        &self,
        request: Request<pb::AssociateLicenseRequest>,
    ) -> Result<Response<pb::AssociateLicenseResponse>, Status> {
        let me = self.me(&request).await?;
        let license = self.portal.associate(&me, &request.get_ref().license_key).await.or_status()?;
        Ok(Response::new(pb::AssociateLicenseResponse { license: Some(conv::customer_license(&license)) }))
    }

    async fn transfer_license(
        &self,
        request: Request<pb::TransferLicenseRequest>,
    ) -> Result<Response<pb::TransferLicenseResponse>, Status> {
        let me = self.me(&request).await?;
        let r = request.get_ref();
        let license = self.portal.transfer(&me, &r.license_id, &r.to_customer_id).await.or_status()?;
        Ok(Response::new(pb::TransferLicenseResponse { license: Some(conv::customer_license(&license)) }))
    }

    async fn list_receipts(
        &self,
        request: Request<pb::ListReceiptsRequest>,
    ) -> Result<Response<pb::ListReceiptsResponse>, Status> {
        let me = self.me(&request).await?;
        let receipts = self.portal.receipts(&me).await.or_status()?;
        Ok(Response::new(pb::ListReceiptsResponse {
            receipts: receipts
                .iter()
                .map(|r| pb::Receipt {
                    receipt_id: r.receipt_id.clone(),
                    license_id: r.license_id.clone(),
                    kind: r.kind.clone(),
                    amount_minor: r.amount_minor,
                    currency: r.currency.clone(),
                    paid_at: Some(to_timestamp(r.paid_at)),
                    recurring_months: r.recurring_months,
                    next_renewal_at: opt_timestamp(r.next_renewal_at()),
                })
                .collect(),
            next_page_token: String::new(),
        }))
    }

    async fn list_my_audit_events(
        &self,
        request: Request<pb::ListMyAuditEventsRequest>,
    ) -> Result<Response<pb::ListMyAuditEventsResponse>, Status> {
        let me = self.me(&request).await?;
        let page = conv::page("page", request.get_ref().page.as_ref()).map_err(invalid)?;
        let events = self.portal.audit_events(&me, &page).await.or_status()?;
        Ok(Response::new(pb::ListMyAuditEventsResponse {
            next_page_token: conv::next_page_token(&events, &page, |e| e.sequence.to_string()),
            events: events.iter().map(conv::audit_event).collect(),
        }))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let me = self.me(&request).await?;
        let token = bearer_token(request.metadata()).unwrap_or_default().to_owned();
        let client = caller_address(&request);
        let r = request.into_inner();
        self.portal.change_password(&me, &token, &r.current_password, r.new_password, &client).await.or_status()?;
        Ok(Response::new(pb::ChangePasswordResponse {}))
    }

    async fn update_contact_details(
        &self,
        request: Request<pb::UpdateContactDetailsRequest>,
    ) -> Result<Response<pb::UpdateContactDetailsResponse>, Status> {
        let me = self.me(&request).await?;
        let client = caller_address(&request);
        let r = request.into_inner();
        let form = ContactForm { contact_name: r.contact_name, contact_email: r.contact_email, phone: r.phone };
        let customer =
            self.portal.update_contact_details(&me, &form, &r.current_password, &client).await.or_status()?;
        Ok(Response::new(pb::UpdateContactDetailsResponse { customer: Some(conv::customer(&customer)) }))
    }

    async fn set_licensee_name(
        &self,
        request: Request<pb::SetLicenseeNameRequest>,
    ) -> Result<Response<pb::SetLicenseeNameResponse>, Status> {
        let me = self.me(&request).await?;
        let r = request.get_ref();
        let license = self.portal.set_licensee_name(&me, &r.license_id, &r.licensee_name).await.or_status()?;
        Ok(Response::new(pb::SetLicenseeNameResponse { license: Some(conv::customer_license(&license)) }))
    }

    async fn get_my_meter_usage(
        &self,
        request: Request<pb::GetMyMeterUsageRequest>,
    ) -> Result<Response<pb::GetMyMeterUsageResponse>, Status> {
        let me = self.me(&request).await?;
        let r = request.get_ref();
        let (current, history) = self.portal.meter_usage(&me, &r.license_id).await.or_status()?;
        Ok(Response::new(pb::GetMyMeterUsageResponse {
            current: current.iter().map(conv::meter_usage).collect(),
            csv: if r.as_csv { usage_csv(&history) } else { String::new() },
            history: history.iter().map(conv::meter_usage).collect(),
        }))
    }

    async fn list_recurring_payments(
        &self,
        request: Request<pb::ListRecurringPaymentsRequest>,
    ) -> Result<Response<pb::ListRecurringPaymentsResponse>, Status> {
        let me = self.me(&request).await?;
        let plans = self.portal.recurring_payments(&me).await.or_status()?;
        Ok(Response::new(pb::ListRecurringPaymentsResponse {
            payments: plans
                .iter()
                .map(|p| pb::RecurringPayment {
                    license_id: p.receipt.license_id.clone(),
                    receipt_id: p.receipt.receipt_id.clone(),
                    amount_minor: p.receipt.amount_minor,
                    currency: p.receipt.currency.clone(),
                    recurring_months: p.receipt.recurring_months,
                    last_paid_at: Some(to_timestamp(p.receipt.paid_at)),
                    next_charge_at: Some(to_timestamp(p.next_charge_at)),
                })
                .collect(),
        }))
    }
}

/// The portal's own response message, field for field the administrator's report.
fn my_usage_report(r: seat_pb::GetUsageReportResponse) -> pb::GetMyUsageReportResponse {
    let seat_pb::GetUsageReportResponse {
        daily_peaks,
        total_seat_hours,
        denials,
        top_users,
        events_dropped,
        csv,
        checkouts,
        overdraft_checkouts,
        from,
        to,
    } = r;
    pb::GetMyUsageReportResponse {
        daily_peaks,
        total_seat_hours,
        denials,
        top_users,
        events_dropped,
        csv,
        checkouts,
        overdraft_checkouts,
        from,
        to,
    }
}
