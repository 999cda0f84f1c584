//! The tonic adapters of the Account service: authenticate, convert, delegate, convert back.

use crate::catalog::{Catalog, IssueLicense};
use crate::AccountError;
use licensing_domain::change::LicenseChange;
use licensing_domain::model::LicenseFilter;
use licensing_proto::account::v1 as pb;
use licensing_proto::account::v1::admin_service_server::{AdminService, AdminServiceServer};
use licensing_runtime::auth::{AdminAuth, AdminId};
use licensing_runtime::convert::proto as conv;
use licensing_runtime::convert::{from_opt_timestamp, from_timestamp};
use licensing_runtime::status::OrStatus;
use tonic::{Request, Response, Status};

/// The vendor's admin API.
#[derive(Clone)]
pub struct AdminApi {
    catalog: Catalog,
    auth: AdminAuth,
}

impl AdminApi {
    pub fn new(catalog: Catalog, auth: AdminAuth) -> Self {
        Self { catalog, auth }
    }

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
        let admin = self.admin(&request).await?;
        let license = self
            .catalog
            .change_license(
                &admin.actor(),
                request.get_ref().license_id(),
                change,
                reason,
            )
            .await
            .or_status()?;
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
    pb::SuspendLicenseRequest,
    pb::ReinstateLicenseRequest,
    pb::RenewLicenseRequest,
    pb::SetLicenseSeatsRequest,
    pb::SetAllowedDeactivationsRequest,
    pb::AddLicenseModulesRequest,
    pb::RemoveLicenseModulesRequest,
    pb::ExtendUpgradePeriodRequest,
    pb::SetPortalDeactivationPolicyRequest,
    pb::ReturnLicenseRequest
);

fn invalid(message: String) -> Status {
    // `message` already starts with the field name.
    licensing_runtime::status::to_status(&AccountError::InvalidArgument {
        field: "request",
        message,
    })
}

fn required_timestamp(
    field: &'static str,
    ts: Option<&prost_types::Timestamp>,
) -> Result<i64, Status> {
    match ts {
        Some(t) => from_timestamp(field, t).map_err(invalid),
        None => Err(licensing_runtime::status::to_status(
            &AccountError::invalid(field, "is required"),
        )),
    }
}

/// Payments are recorded as receipts by the Account service's portal work; until then an admin
/// call carrying one is refused rather than silently dropping it.
fn refuse_payment(payment: Option<&pb::Payment>) -> Result<(), Status> {
    match payment {
        Some(_) => Err(licensing_runtime::status::to_status(&AccountError::Unimplemented(
            "payment: recording payments is not available in this version; send the call without a payment",
        ))),
        None => Ok(()),
    }
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
        let product = self
            .catalog
            .create_product(&admin.actor(), &r.code, &r.name, modules)
            .await
            .or_status()?;
        Ok(Response::new(pb::CreateProductResponse {
            product: Some(conv::product(&product)),
        }))
    }

    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::GetProductResponse>, Status> {
        self.admin(&request).await?;
        let product = self
            .catalog
            .get_product(&request.get_ref().code)
            .await
            .or_status()?;
        Ok(Response::new(pb::GetProductResponse {
            product: Some(conv::product(&product)),
        }))
    }

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        self.admin(&request).await?;
        let page = conv::page(request.get_ref().page.as_ref());
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
        let released_at =
            from_opt_timestamp("released_at", r.released_at.as_ref()).map_err(invalid)?;
        let product = self
            .catalog
            .add_product_version(&admin.actor(), &r.product_code, &r.version, released_at)
            .await
            .or_status()?;
        Ok(Response::new(pb::AddProductVersionResponse {
            product: Some(conv::product(&product)),
        }))
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
        Ok(Response::new(pb::CreateCustomerResponse {
            customer: Some(conv::customer(&customer)),
        }))
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::GetCustomerResponse>, Status> {
        self.admin(&request).await?;
        let customer = self
            .catalog
            .get_customer(&request.get_ref().customer_id)
            .await
            .or_status()?;
        Ok(Response::new(pb::GetCustomerResponse {
            customer: Some(conv::customer(&customer)),
        }))
    }

    async fn list_customers(
        &self,
        request: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<pb::ListCustomersResponse>, Status> {
        self.admin(&request).await?;
        let r = request.get_ref();
        let page = conv::page(r.page.as_ref());
        let customers = self
            .catalog
            .list_customers(&r.query, &page)
            .await
            .or_status()?;
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
        self.catalog
            .set_customer_password(&admin.actor(), &r.customer_id, r.password)
            .await
            .or_status()?;
        Ok(Response::new(pb::SetCustomerPasswordResponse {}))
    }

    async fn issue_license(
        &self,
        request: Request<pb::IssueLicenseRequest>,
    ) -> Result<Response<pb::IssueLicenseResponse>, Status> {
        let admin = self.admin(&request).await?;
        let r = request.into_inner();
        refuse_payment(r.payment.as_ref())?;
        let input = IssueLicense {
            kind: conv::kind_from_proto(r.kind),
            valid_from: from_opt_timestamp("valid_from", r.valid_from.as_ref()).map_err(invalid)?,
            expires_at: from_opt_timestamp("expires_at", r.expires_at.as_ref()).map_err(invalid)?,
            upgrades_until: from_opt_timestamp("upgrades_until", r.upgrades_until.as_ref())
                .map_err(invalid)?,
            product_code: r.product_code,
            customer_id: r.customer_id,
            seats: r.seats,
            allowed_deactivations: r.allowed_deactivations,
            modules: r.modules,
            associate: r.associate,
            notes: r.notes,
        };
        let issued = self
            .catalog
            .issue_license(&admin.actor(), input)
            .await
            .or_status()?;
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
        let license = self
            .catalog
            .get_license(&request.get_ref().license_id)
            .await
            .or_status()?;
        Ok(Response::new(pb::GetLicenseResponse {
            license: Some(conv::license(&license)),
        }))
    }

    async fn list_licenses(
        &self,
        request: Request<pb::ListLicensesRequest>,
    ) -> Result<Response<pb::ListLicensesResponse>, Status> {
        self.admin(&request).await?;
        let r = request.into_inner();
        let page = conv::page(r.page.as_ref());
        let status = match r.status {
            0 => None,
            n => Some(
                conv::status_from_proto(n)
                    .ok_or_else(|| invalid(format!("status: {n} is not a license status")))?,
            ),
        };
        let filter = LicenseFilter {
            customer_id: Some(r.customer_id).filter(|c| !c.is_empty()),
            product_code: Some(r.product_code).filter(|c| !c.is_empty()),
            status,
            ..Default::default()
        };
        let licenses = self
            .catalog
            .list_licenses(filter, &r.query, &page)
            .await
            .or_status()?;
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
        let license = self
            .change(request, LicenseChange::Suspend, &reason)
            .await?;
        Ok(Response::new(pb::SuspendLicenseResponse {
            license: Some(license),
        }))
    }

    async fn reinstate_license(
        &self,
        request: Request<pb::ReinstateLicenseRequest>,
    ) -> Result<Response<pb::ReinstateLicenseResponse>, Status> {
        let license = self.change(request, LicenseChange::Reinstate, "").await?;
        Ok(Response::new(pb::ReinstateLicenseResponse {
            license: Some(license),
        }))
    }

    async fn renew_license(
        &self,
        request: Request<pb::RenewLicenseRequest>,
    ) -> Result<Response<pb::RenewLicenseResponse>, Status> {
        refuse_payment(request.get_ref().payment.as_ref())?;
        let expires_at = required_timestamp("expires_at", request.get_ref().expires_at.as_ref())?;
        let license = self
            .change(request, LicenseChange::Renew { expires_at }, "")
            .await?;
        Ok(Response::new(pb::RenewLicenseResponse {
            license: Some(license),
        }))
    }

    async fn set_license_seats(
        &self,
        request: Request<pb::SetLicenseSeatsRequest>,
    ) -> Result<Response<pb::SetLicenseSeatsResponse>, Status> {
        let seats = request.get_ref().seats;
        let license = self
            .change(request, LicenseChange::SetSeats(seats), "")
            .await?;
        Ok(Response::new(pb::SetLicenseSeatsResponse {
            license: Some(license),
        }))
    }

    async fn set_allowed_deactivations(
        &self,
        request: Request<pb::SetAllowedDeactivationsRequest>,
    ) -> Result<Response<pb::SetAllowedDeactivationsResponse>, Status> {
        let n = request.get_ref().allowed_deactivations;
        let license = self
            .change(request, LicenseChange::SetAllowedDeactivations(n), "")
            .await?;
        Ok(Response::new(pb::SetAllowedDeactivationsResponse {
            license: Some(license),
        }))
    }

    async fn add_license_modules(
        &self,
        request: Request<pb::AddLicenseModulesRequest>,
    ) -> Result<Response<pb::AddLicenseModulesResponse>, Status> {
        refuse_payment(request.get_ref().payment.as_ref())?;
        let modules = request.get_ref().modules.clone();
        let license = self
            .change(request, LicenseChange::AddModules(modules), "")
            .await?;
        Ok(Response::new(pb::AddLicenseModulesResponse {
            license: Some(license),
        }))
    }

    async fn remove_license_modules(
        &self,
        request: Request<pb::RemoveLicenseModulesRequest>,
    ) -> Result<Response<pb::RemoveLicenseModulesResponse>, Status> {
        let modules = request.get_ref().modules.clone();
        let license = self
            .change(request, LicenseChange::RemoveModules(modules), "")
            .await?;
        Ok(Response::new(pb::RemoveLicenseModulesResponse {
            license: Some(license),
        }))
    }

    async fn extend_upgrade_period(
        &self,
        request: Request<pb::ExtendUpgradePeriodRequest>,
    ) -> Result<Response<pb::ExtendUpgradePeriodResponse>, Status> {
        refuse_payment(request.get_ref().payment.as_ref())?;
        let upgrades_until =
            required_timestamp("upgrades_until", request.get_ref().upgrades_until.as_ref())?;
        let license = self
            .change(
                request,
                LicenseChange::ExtendUpgradePeriod { upgrades_until },
                "",
            )
            .await?;
        Ok(Response::new(pb::ExtendUpgradePeriodResponse {
            license: Some(license),
        }))
    }

    async fn set_portal_deactivation_policy(
        &self,
        request: Request<pb::SetPortalDeactivationPolicyRequest>,
    ) -> Result<Response<pb::SetPortalDeactivationPolicyResponse>, Status> {
        let counts = request.get_ref().portal_deactivation_counts;
        let license = self
            .change(
                request,
                LicenseChange::SetPortalDeactivationCounts(counts),
                "",
            )
            .await?;
        Ok(Response::new(pb::SetPortalDeactivationPolicyResponse {
            license: Some(license),
        }))
    }

    async fn return_license(
        &self,
        request: Request<pb::ReturnLicenseRequest>,
    ) -> Result<Response<pb::ReturnLicenseResponse>, Status> {
        let reason = request.get_ref().reason.clone();
        let license = self
            .change(request, LicenseChange::Associate(None), &reason)
            .await?;
        Ok(Response::new(pb::ReturnLicenseResponse {
            license: Some(license),
        }))
    }

    async fn associate_license(
        &self,
        request: Request<pb::AdminAssociateLicenseRequest>,
    ) -> Result<Response<pb::AdminAssociateLicenseResponse>, Status> {
        let admin = self.admin(&request).await?;
        let r = request.get_ref();
        let license = self
            .catalog
            .associate(&admin.actor(), &r.license_id, &r.customer_id)
            .await
            .or_status()?;
        Ok(Response::new(pb::AdminAssociateLicenseResponse {
            license: Some(conv::license(&license)),
        }))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        self.admin(&request).await?;
        let r = request.get_ref();
        let page = conv::page(r.page.as_ref());
        let events = self
            .catalog
            .list_audit(&r.subject, &page)
            .await
            .or_status()?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            next_page_token: conv::next_page_token(&events, &page, |e| e.sequence.to_string()),
            events: events.iter().map(conv::audit_event).collect(),
        }))
    }
}
