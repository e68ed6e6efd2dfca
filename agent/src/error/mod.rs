//! The one place where failures become XenAPI error codes with their parameters.
//!
//! Every variant names its wire code and parameters, in wire order; a test checks each against
//! `vendor/xenapi/errors.json`. The conversions from each lower layer's error live beside
//! this file: `backend.rs` (the hypervisor backends), `storage.rs` (file systems and the I/O
//! engine), `network.rs` (the network backends); [`ApiError::fault`] says whose fault a failure is, for the HTTP data paths.

mod backend;
mod network;
mod storage;

pub use storage::{sr_backend_failure, vdi_io_error};

/// The full message of an error and its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Whose fault a failure is: the caller's (bad input, wrong state) or the server's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The request cannot succeed as sent.
    Client,
    /// The server failed to carry out a valid request.
    Server,
}

macro_rules! api_errors {
    ($( $(#[$doc:meta])* $variant:ident { $($field:ident),* } => $code:literal, )*) => {
        /// A XenAPI failure, as it travels in `ErrorDescription`.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum ApiError {
            $( $(#[$doc])* $variant { $( #[allow(missing_docs)] $field: String ),* }, )*
        }

        impl ApiError {
            /// The wire code.
            pub fn code(&self) -> &'static str {
                match self { $( ApiError::$variant { .. } => $code, )* }
            }
            /// The parameters, in wire order.
            pub fn params(&self) -> Vec<String> {
                match self {
                    $( ApiError::$variant { $($field),* } => vec![$($field.clone()),*], )*
                }
            }
        }

        impl ApiError {
            /// The error as `ErrorDescription` carries it: the code, then the parameters.
            pub fn description(&self) -> Vec<String> {
                let mut d = vec![self.code().to_owned()];
                d.extend(self.params());
                d
            }

            /// The error a wire code and its parameters name, where this build raises that
            /// code (a reply forwarded from another host of the pool).
            pub fn from_wire(code: &str, params: &[String]) -> Option<Self> {
                let mut it = params.iter().cloned();
                let _ = &mut it;
                match code {
                    $( $code => Some(ApiError::$variant { $( $field: it.next().unwrap_or_default() ),* }), )*
                    _ => None,
                }
            }
        }

        /// Every code this daemon raises with its parameter names (checked against errors.json).
        pub const RAISED: &[(&str, &[&str])] = &[ $( ($code, &[$(stringify!($field)),*]), )* ];
    };
}

api_errors! {
    /// The session reference is not valid.
    SessionInvalid { handle } => "SESSION_INVALID",
    /// Wrong user name or password.
    SessionAuthenticationFailed {} => "SESSION_AUTHENTICATION_FAILED",
    /// A reference names no object of the class.
    HandleInvalid { class, handle } => "HANDLE_INVALID",
    /// A uuid names no object of the class.
    UuidInvalid { r#type, uuid } => "UUID_INVALID",
    /// `add_to_<map>` with a key already present.
    MapDuplicateKey { r#type, param_name, uuid, key } => "MAP_DUPLICATE_KEY",
    /// No such method.
    MessageMethodUnknown { method } => "MESSAGE_METHOD_UNKNOWN",
    /// Wrong number of parameters.
    MessageParameterCountMismatch { method, expected, received } => "MESSAGE_PARAMETER_COUNT_MISMATCH",
    /// A parameter or field of the wrong type.
    FieldTypeError { field } => "FIELD_TYPE_ERROR",
    /// A value out of range or otherwise unacceptable.
    InvalidValue { field, value } => "INVALID_VALUE",
    /// The message exists but this daemon does not carry it out yet.
    NotImplemented { function } => "NOT_IMPLEMENTED",
    /// The VM is in the wrong power state.
    VmBadPowerState { vm, expected, actual } => "VM_BAD_POWER_STATE",
    /// The operation is not allowed now.
    OperationNotAllowed { reason } => "OPERATION_NOT_ALLOWED",
    /// Another operation is running on the object.
    OtherOperationInProgress { class, object, operation_type, operation_ref } => "OTHER_OPERATION_IN_PROGRESS",
    /// The host lacks the memory to start the VM.
    HostNotEnoughFreeMemory { needed, available } => "HOST_NOT_ENOUGH_FREE_MEMORY",
    /// The operation cannot be done on a template: the VM and the operation refused (the
    /// reference sends both, though errors.json documents only the first).
    VmIsTemplate { vm, operation } => "VM_IS_TEMPLATE",
    /// Something failed inside the daemon.
    InternalError { message } => "INTERNAL_ERROR",
    /// A value that must be unique is already taken.
    DbUniquenessConstraintViolation { table, field, value } => "DB_UNIQUENESS_CONSTRAINT_VIOLATION",
    /// The event queue overflowed (legacy events).
    EventsLost {} => "EVENTS_LOST",
    /// `event.next` without `event.register`.
    SessionNotRegistered { handle } => "SESSION_NOT_REGISTERED",
    /// The event token could not be parsed.
    EventFromTokenParseFailure { token } => "EVENT_FROM_TOKEN_PARSE_FAILURE",
    /// The task was cancelled.
    TaskCancelled { task } => "TASK_CANCELLED",
    /// The caller may not do this.
    PermissionDenied { message } => "PERMISSION_DENIED",
    /// The session has too many tasks pending.
    TooManyPendingTasks {} => "TOO_MANY_PENDING_TASKS",
    /// A device number is taken.
    DeviceAlreadyExists { device } => "DEVICE_ALREADY_EXISTS",
    /// A value is not supported here.
    ValueNotSupported { field, value, reason } => "VALUE_NOT_SUPPORTED",
    /// The object is in use by another.
    VdiInUse { vdi, operation } => "VDI_IN_USE",
    /// A user blocked this operation on the object.
    OperationBlocked { r#ref, code } => "OPERATION_BLOCKED",
    /// The operation cannot be done on a snapshot.
    VmIsSnapshot { vm, operation } => "VM_IS_SNAPSHOT",
    /// The device is already attached.
    DeviceAlreadyAttached { device } => "DEVICE_ALREADY_ATTACHED",
    /// The device is already detached.
    DeviceAlreadyDetached { device } => "DEVICE_ALREADY_DETACHED",
    /// The CD drive already holds a disc.
    VbdNotEmpty { vbd } => "VBD_NOT_EMPTY",
    /// The CD drive is empty.
    VbdIsEmpty { vbd } => "VBD_IS_EMPTY",
    /// The VBD is not a removable-media drive.
    VbdNotRemovableMedia { vbd } => "VBD_NOT_REMOVABLE_MEDIA",
    /// The VBD cannot be hot-unplugged.
    VbdNotUnpluggable { vbd } => "VBD_NOT_UNPLUGGABLE",
    /// A device name or number is not valid.
    InvalidDevice { device } => "INVALID_DEVICE",
    /// The VDI is not an ISO.
    VdiIsNotIso { vdi, r#type } => "VDI_IS_NOT_ISO",
    /// CD drives must be read-only.
    VbdCdsMustBeReadonly {} => "VBD_CDS_MUST_BE_READONLY",
    /// Memory settings break `static_min <= dynamic_min <= dynamic_max <= static_max`.
    MemoryConstraintViolation { constraint } => "MEMORY_CONSTRAINT_VIOLATION",
    /// `provision` on something that is not a template.
    ProvisionOnlyAllowedOnTemplate {} => "PROVISION_ONLY_ALLOWED_ON_TEMPLATE",
    /// Saving the memory image for a checkpoint failed.
    VmCheckpointSuspendFailed { vm } => "VM_CHECKPOINT_SUSPEND_FAILED",
    /// Reverting to a snapshot failed.
    VmRevertFailed { vm, snapshot } => "VM_REVERT_FAILED",
    /// The guest did not shut down in time.
    VmShutdownTimeout { vm, timeout } => "VM_SHUTDOWN_TIMEOUT",
    /// `revert` on something that is not a snapshot.
    RevertOnlyAllowedOnSnapshot {} => "REVERT_ONLY_ALLOWED_ON_SNAPSHOT",
    /// More vCPUs than allowed.
    VmTooManyVcpus { vm } => "VM_TOO_MANY_VCPUS",
    /// The storage backend failed: an SM-style status code, its output and its error text.
    SrBackendFailure { status, stdout, stderr } => "SR_BACKEND_FAILURE",
    /// The SR still has a plugged PBD.
    SrHasPbd { sr } => "SR_HAS_PBD",
    /// The SR has no PBD on this host (or none plugged).
    SrHasNoPbds { sr } => "SR_HAS_NO_PBDS",
    /// The SR type does not support the operation.
    SrOperationNotSupported { sr } => "SR_OPERATION_NOT_SUPPORTED",
    /// No storage driver of this type.
    SrUnknownDriver { driver } => "SR_UNKNOWN_DRIVER",
    /// An SR with this uuid exists.
    SrUuidExists { uuid } => "SR_UUID_EXISTS",
    /// This host already has a PBD for the SR.
    PbdExists { sr, host, pbd } => "PBD_EXISTS",
    /// The VDI's backing file is gone.
    VdiMissing { sr, vdi } => "VDI_MISSING",
    /// The VDI is read-only.
    VdiReadonly { vdi } => "VDI_READONLY",
    /// The VDI is smaller than needed.
    VdiTooSmall { vdi, minimum_size } => "VDI_TOO_SMALL",
    /// No file at the location given.
    VdiLocationMissing { sr, location } => "VDI_LOCATION_MISSING",
    /// The VDI has no changed-block-tracking metadata.
    VdiNoCbtMetadata { vdi } => "VDI_NO_CBT_METADATA",
    /// The VDI's type does not allow the operation: the VDI and its type.
    VdiIncompatibleType { vdi, r#type } => "VDI_INCOMPATIBLE_TYPE",
    /// Changed-block tracking is on for the VDI, which forbids the operation.
    VdiCbtEnabled { vdi } => "VDI_CBT_ENABLED",
    /// Another VDI of the SR has this location.
    LocationNotUnique { sr, location } => "LOCATION_NOT_UNIQUE",
    /// The VDI's on_boot mode forbids the operation.
    VdiOnBootModeIncompatibleWithOperation {} => "VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION",
    /// An upload ended before all its bytes arrived.
    ImportErrorPrematureEof {} => "IMPORT_ERROR_PREMATURE_EOF",
    /// An upload could not be imported.
    ImportError { msg } => "IMPORT_ERROR",
    /// No SR was named and the pool's default SR is not set or gone.
    DefaultSrNotFound { sr } => "DEFAULT_SR_NOT_FOUND",
    /// Reading or writing the VDI's bytes failed.
    VdiIoError { message } => "VDI_IO_ERROR",
    /// The VM's bootloader failed.
    BootloaderFailed { vm, msg } => "BOOTLOADER_FAILED",
    /// The guest refused to let a device go.
    DeviceDetachRejected { class, device, reason } => "DEVICE_DETACH_REJECTED",
    /// The guest did not suspend in time.
    VmSuspendTimeout { vm, timeout } => "VM_SUSPEND_TIMEOUT",
    /// A VLAN tag outside 0..=4094.
    VlanTagInvalid { vlan } => "VLAN_TAG_INVALID",
    /// The PIF is a VLAN's untagged PIF.
    PifIsVlan { pif } => "PIF_IS_VLAN",
    /// The PIF is in a bond, or is a bond's master.
    PifAlreadyBonded { pif } => "PIF_ALREADY_BONDED",
    /// The PIF carries the host's management interface.
    PifIsManagementIface { pif } => "PIF_IS_MANAGEMENT_INTERFACE",
    /// The PIF is physical (the reference sends no parameter from `PIF.destroy`).
    PifIsPhysical { pif } => "PIF_IS_PHYSICAL",
    /// The PIF is not managed by the toolstack.
    PifUnmanaged { pif } => "PIF_UNMANAGED",
    /// A VLAN with this tag already exists on the device (the reference names the device).
    PifVlanExists { pif } => "PIF_VLAN_EXISTS",
    /// A VLAN still uses the PIF.
    PifVlanStillExists { pif } => "PIF_VLAN_STILL_EXISTS",
    /// A tunnel still uses the PIF.
    PifTunnelStillExists { pif } => "PIF_TUNNEL_STILL_EXISTS",
    /// The kernel already has a VLAN with this tag on the device.
    VlanInUse { device, vlan } => "VLAN_IN_USE",
    /// The network is not managed by the toolstack.
    NetworkUnmanaged { network } => "NETWORK_UNMANAGED",
    /// The host already has a PIF on the network (the reference sends the host and the PIF).
    NetworkAlreadyConnected { network, connected_pif } => "NETWORK_ALREADY_CONNECTED",
    /// The network's purposes exclude each other.
    NetworkIncompatiblePurposes { new_purpose, conflicting_purpose } => "NETWORK_INCOMPATIBLE_PURPOSES",
    /// A VLAN cannot be made on a bond member.
    CannotAddVlanToBondSlave { pif } => "CANNOT_ADD_VLAN_TO_BOND_SLAVE",
    /// A tunnel cannot be made on a bond member.
    CannotAddTunnelToBondSlave { pif } => "CANNOT_ADD_TUNNEL_TO_BOND_SLAVE",
    /// The PIF is a tunnel's access PIF.
    IsTunnelAccessPif { pif } => "IS_TUNNEL_ACCESS_PIF",
    /// A tunnel's transport PIF has no IP configuration.
    TransportPifNotConfigured { pif } => "TRANSPORT_PIF_NOT_CONFIGURED",
    /// A bond member cannot be plugged on its own.
    CannotPlugBondSlave { pif } => "CANNOT_PLUG_BOND_SLAVE",
    /// A bond needs members.
    PifBondNeedsMoreMembers {} => "PIF_BOND_NEEDS_MORE_MEMBERS",
    /// A bond's members are on different hosts.
    PifCannotBondCrossHost {} => "PIF_CANNOT_BOND_CROSS_HOST",
    /// More than one bond member has an IP configuration.
    PifBondMoreThanOneIp {} => "PIF_BOND_MORE_THAN_ONE_IP",
    /// The bond members' properties differ.
    IncompatiblePifProperties {} => "INCOMPATIBLE_PIF_PROPERTIES",
    /// The members' primary address types differ.
    PifIncompatiblePrimaryAddressType { pif } => "PIF_INCOMPATIBLE_PRIMARY_ADDRESS_TYPE",
    /// The PIF has no IPv4 configuration.
    PifHasNoNetworkConfiguration { pif } => "PIF_HAS_NO_NETWORK_CONFIGURATION",
    /// The PIF has no IPv6 configuration.
    PifHasNoV6NetworkConfiguration { pif } => "PIF_HAS_NO_V6_NETWORK_CONFIGURATION",
    /// `disallow_unplug` is set on the PIF.
    PifDoesNotAllowUnplug { pif } => "PIF_DOES_NOT_ALLOW_UNPLUG",
    /// The PIF's properties cannot be changed (a VLAN, a tunnel, a bond member).
    CannotChangePifProperties { pif } => "CANNOT_CHANGE_PIF_PROPERTIES",
    /// The host has no PIF on the network.
    PifNotPresent { host, network } => "PIF_NOT_PRESENT",
    /// A running VM's VIF is on the network.
    VifInUse { network, vif } => "VIF_IN_USE",
    /// The host already has a PIF with this device.
    DuplicatePifDeviceName { device } => "DUPLICATE_PIF_DEVICE_NAME",
    /// The host has no NIC with this device name and MAC.
    CouldNotFindNetworkInterfaceWithSpecifiedDeviceNameAndMacAddress { device, mac } => "COULD_NOT_FIND_NETWORK_INTERFACE_WITH_SPECIFIED_DEVICE_NAME_AND_MAC_ADDRESS",
    /// Not a MAC address.
    MacInvalid { mac } => "MAC_INVALID",
    /// The network still has PIFs (their refs).
    NetworkContainsPif { pifs } => "NETWORK_CONTAINS_PIF",
    /// The network still has attached VIFs (their refs).
    NetworkContainsVif { vifs } => "NETWORK_CONTAINS_VIF",
    /// Another network has this bridge.
    BridgeNameExists { bridge } => "BRIDGE_NAME_EXISTS",
    /// The host cannot reach the network.
    HostCannotAttachNetwork { host, network } => "HOST_CANNOT_ATTACH_NETWORK",
    /// An address outside what the VIF's locking mode allows.
    AddressViolatesLockingConstraint { address } => "ADDRESS_VIOLATES_LOCKING_CONSTRAINT",
    /// The VM's guest agent does not set addresses.
    VmLacksFeature { vm } => "VM_LACKS_FEATURE",
    /// A database backup of another schema version.
    RestoreIncompatibleVersion {} => "RESTORE_INCOMPATIBLE_VERSION",
    /// A physical interface of the backup's master has no device of its name on this host.
    RestoreTargetMissingDevice { device } => "RESTORE_TARGET_MISSING_DEVICE",
    /// This host's management interface is not in the backup.
    RestoreTargetMgmtIfNotInBackup {} => "RESTORE_TARGET_MGMT_IF_NOT_IN_BACKUP",
    /// Not an IP address of the family asked for.
    InvalidIpAddressSpecified { parameter } => "INVALID_IP_ADDRESS_SPECIFIED",
    /// Not an address with a prefix length of the family asked for.
    InvalidCidrAddressSpecified { parameter } => "INVALID_CIDR_ADDRESS_SPECIFIED",
    /// The PIF is not this host's.
    PifNotAttachedToHost { pif, host } => "PIF_NOT_ATTACHED_TO_HOST",
    /// The host is not in emergency mode (`host.local_management_reconfigure`).
    NotInEmergencyMode {} => "NOT_IN_EMERGENCY_MODE",
    /// The host's networking could not be configured as the PIF asks.
    PifConfigurationError { pif, msg } => "PIF_CONFIGURATION_ERROR",
    /// An interface named for the management interface has no address.
    InterfaceHasNoIp { interface } => "INTERFACE_HAS_NO_IP",
    /// No plugin of this name in the host's plugin directory.
    XenapiMissingPlugin { name } => "XENAPI_MISSING_PLUGIN",
    /// A host plugin failed: how, and what it wrote on stdout and stderr.
    XenapiPluginFailure { status, stdout, stderr } => "XENAPI_PLUGIN_FAILURE",
    /// A host extension answered a failure that is not a list of strings (as JSON).
    ExtensionProtocolFailure { failure } => "EXTENSION_PROTOCOL_FAILURE",
    /// The message was removed from the API.
    MessageRemoved {} => "MESSAGE_REMOVED",
    /// The hostname is not acceptable.
    HostNameInvalid { reason } => "HOST_NAME_INVALID",
    /// The host has no such edition.
    InvalidEdition { edition } => "INVALID_EDITION",
    /// A license file could not be read (`host.license_add` of what is not base64).
    LicenseProcessingError {} => "LICENSE_PROCESSING_ERROR",
    /// The host's certificate cannot be read.
    CertificateLibraryCorrupt {} => "CERTIFICATE_LIBRARY_CORRUPT",
    /// The session's roles lack the permission the call needs: the permission, and which
    /// roles have it.
    RbacPermissionDenied { permission, message } => "RBAC_PERMISSION_DENIED",
    /// The directory knows the user, but the pool does not let them in.
    SessionAuthorizationFailed { username, msg } => "SESSION_AUTHORIZATION_FAILED",
    /// A subject with this identifier is already in the pool.
    SubjectAlreadyExists {} => "SUBJECT_ALREADY_EXISTS",
    /// The directory has no subject with this name or identifier.
    SubjectCannotBeResolved {} => "SUBJECT_CANNOT_BE_RESOLVED",
    /// No such role, or the subject does not have it.
    RoleNotFound {} => "ROLE_NOT_FOUND",
    /// The subject already has the role.
    RoleAlreadyExists {} => "ROLE_ALREADY_EXISTS",
    /// External authentication is disabled.
    AuthIsDisabled {} => "AUTH_IS_DISABLED",
    /// No external authentication of this type.
    AuthUnknownType { r#type } => "AUTH_UNKNOWN_TYPE",
    /// External authentication is already enabled on the host.
    AuthAlreadyEnabled { current_auth_type, current_service_name } => "AUTH_ALREADY_ENABLED",
    /// The directory service failed.
    AuthServiceError { message } => "AUTH_SERVICE_ERROR",
    /// No secure connection to the directory could be set up.
    AuthSetupTlsConnection { message } => "AUTH_SETUP_TLS_CONNECTION",
    /// The directory's certificate is not trusted.
    AuthInvalidTrustedCerts { message } => "AUTH_INVALID_TRUSTED_CERTS",
    /// No trusted certificates for the directory.
    AuthNoTrustedCerts { message } => "AUTH_NO_TRUSTED_CERTS",
    /// Enabling external authentication on the host failed.
    AuthEnableFailed { message } => "AUTH_ENABLE_FAILED",
    /// The directory refused the service account's credentials.
    AuthEnableFailedWrongCredentials { message } => "AUTH_ENABLE_FAILED_WRONG_CREDENTIALS",
    /// The directory could not be reached.
    AuthEnableFailedUnavailable { message } => "AUTH_ENABLE_FAILED_UNAVAILABLE",
    /// The directory's address could not be resolved.
    AuthEnableFailedDomainLookupFailed { message } => "AUTH_ENABLE_FAILED_DOMAIN_LOOKUP_FAILED",
    /// The base of the directory tree to search does not exist.
    AuthEnableFailedInvalidOu { message } => "AUTH_ENABLE_FAILED_INVALID_OU",
    /// The service account may not read the directory.
    AuthEnableFailedPermissionDenied { message } => "AUTH_ENABLE_FAILED_PERMISSION_DENIED",
    /// The certificates given to trust are not valid, or the directory's is not among them.
    AuthEnableFailedInvalidTrustedCerts { message } => "AUTH_ENABLE_FAILED_INVALID_TRUSTED_CERTS",
    /// No certificates to trust.
    AuthEnableFailedNoTrustedCerts { message } => "AUTH_ENABLE_FAILED_NO_TRUSTED_CERTS",
    /// Disabling external authentication on the host failed.
    AuthDisableFailed { message } => "AUTH_DISABLE_FAILED",
    /// A host of the pool already has external authentication enabled.
    PoolAuthAlreadyEnabled { host } => "POOL_AUTH_ALREADY_ENABLED",
    /// Enabling external authentication failed on a host of the pool.
    PoolAuthEnableFailed { host, message } => "POOL_AUTH_ENABLE_FAILED",
    /// The directory refused the service account's credentials (pool form).
    PoolAuthEnableFailedWrongCredentials { host, message } => "POOL_AUTH_ENABLE_FAILED_WRONG_CREDENTIALS",
    /// The directory could not be reached (pool form).
    PoolAuthEnableFailedUnavailable { host, message } => "POOL_AUTH_ENABLE_FAILED_UNAVAILABLE",
    /// The directory's address could not be resolved (pool form).
    PoolAuthEnableFailedDomainLookupFailed { host, message } => "POOL_AUTH_ENABLE_FAILED_DOMAIN_LOOKUP_FAILED",
    /// The base of the directory tree does not exist (pool form).
    PoolAuthEnableFailedInvalidOu { host, message } => "POOL_AUTH_ENABLE_FAILED_INVALID_OU",
    /// The service account may not read the directory (pool form).
    PoolAuthEnableFailedPermissionDenied { host, message } => "POOL_AUTH_ENABLE_FAILED_PERMISSION_DENIED",
    /// Certificates not valid or not the directory's (pool form).
    PoolAuthEnableFailedInvalidTrustedCerts { host, message } => "POOL_AUTH_ENABLE_FAILED_INVALID_TRUSTED_CERTS",
    /// No certificates to trust (pool form).
    PoolAuthEnableFailedNoTrustedCerts { host, message } => "POOL_AUTH_ENABLE_FAILED_NO_TRUSTED_CERTS",
    /// Disabling external authentication failed on a host of the pool.
    PoolAuthDisableFailed { host, message } => "POOL_AUTH_DISABLE_FAILED",
    /// A password login on a pool member: log in to the master, at this address.
    HostIsSlave { master_address } => "HOST_IS_SLAVE",
    /// `pool.join`: the master could not be reached.
    JoiningHostConnectionFailed {} => "JOINING_HOST_CONNECTION_FAILED",
    /// `pool.join`: the master answered with an HTTP error.
    JoiningHostServiceFailed {} => "JOINING_HOST_SERVICE_FAILED",
    /// `pool.join`: the joining host already has other hosts in its pool.
    JoiningHostCannotBeMasterOfOtherHosts {} => "JOINING_HOST_CANNOT_BE_MASTER_OF_OTHER_HOSTS",
    /// `pool.join`: the joining host runs VMs.
    JoiningHostCannotHaveRunningVms {} => "JOINING_HOST_CANNOT_HAVE_RUNNING_VMS",
    /// `pool.join`: a VM of the joining host has an operation in progress.
    JoiningHostCannotHaveVmsWithCurrentOperations {} => "JOINING_HOST_CANNOT_HAVE_VMS_WITH_CURRENT_OPERATIONS",
    /// `pool.join`: the joining host has a shared SR.
    JoiningHostCannotContainSharedSrs {} => "JOINING_HOST_CANNOT_CONTAIN_SHARED_SRS",
    /// `pool.join`: the two hosts run different product versions.
    PoolJoiningHostMustHaveSameProductVersion {} => "POOL_JOINING_HOST_MUST_HAVE_SAME_PRODUCT_VERSION",
    /// `pool.join` of a host to itself.
    HostItsOwnSlave {} => "HOST_ITS_OWN_SLAVE",
    /// Another host of the pool could not be reached.
    CannotContactHost { host } => "CANNOT_CONTACT_HOST",
    /// The host is not live.
    HostOffline { host } => "HOST_OFFLINE",
    /// The host is disabled (`host.disable`): it takes no new VMs.
    HostDisabled { host } => "HOST_DISABLED",
    /// `host.destroy`/`declare_dead` of a host that answers (or of this host).
    HostIsLive { host } => "HOST_IS_LIVE",
    /// The host still has VMs resident on it.
    HostHasResidentVms { host } => "HOST_HAS_RESIDENT_VMS",
    /// Refused while high availability is on.
    HaIsEnabled {} => "HA_IS_ENABLED",
    /// `pool.disable_ha` (and what needs HA) while high availability is off.
    HaNotEnabled {} => "HA_NOT_ENABLED",
    /// The change would leave too few resources to restart the protected VMs after the
    /// number of host failures the pool is planned for.
    HaOperationWouldBreakFailoverPlan {} => "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN",
    /// A protected VM has a disk on an SR not every enabled host sees.
    HaConstraintViolationSrNotShared { sr } => "HA_CONSTRAINT_VIOLATION_SR_NOT_SHARED",
    /// A protected VM has a VIF on a network not every enabled host has a PIF on.
    HaConstraintViolationNetworkNotShared { network } => "HA_CONSTRAINT_VIOLATION_NETWORK_NOT_SHARED",
    /// This host lost its liveness lease while HA is on: it is fenced and writes nothing.
    HaShouldBeFenced { host } => "HA_SHOULD_BE_FENCED",
    /// `pool.enable_ha` on a host alone: HA needs a pool.
    HaTooFewHosts {} => "HA_TOO_FEW_HOSTS",
    /// `pool.enable_ha`: no SR can hold the HA state file.
    CannotCreateStateFile {} => "CANNOT_CREATE_STATE_FILE",
    /// The VM has a virtual GPU (it cannot move between hosts).
    VmHasVgpu { vm } => "VM_HAS_VGPU",
    /// The VM has a passed-through USB device (it cannot move between hosts).
    VmHasVusbs { vm } => "VM_HAS_VUSBS",
    /// A pool secret rotation has not finished: `pool.rotate_secret` again completes it.
    PoolSecretRotationPending {} => "POOL_SECRET_ROTATION_PENDING",
    /// The VM has a disk on an SR the host cannot see.
    VmRequiresSr { vm, sr } => "VM_REQUIRES_SR",
    /// No other host can take the VMs (`host.evacuate`).
    NoHostsAvailable {} => "NO_HOSTS_AVAILABLE",
    /// `host.assert_can_evacuate`: each VM that cannot move, as `code,params`, joined by `|`.
    CannotEvacuateHost { errors } => "CANNOT_EVACUATE_HOST",
    /// `host.evacuate` with HA on: a resident VM HA does not protect is to be stopped first.
    HostEvacuateVmNotHaProtected { vm } => "HOST_EVACUATE_VM_NOT_HA_PROTECTED",
    /// `VM.pool_migrate` failed after it began; the VM runs on the source again.
    VmMigrateFailed { vm, source, destination, msg } => "VM_MIGRATE_FAILED",
    /// `VM.migrate_send`: a VDI of the VM that the VDI map does not name (and no rule places).
    VdiNotInMap { vdi } => "VDI_NOT_IN_MAP",
    /// `VM.migrate_send` to another pool: a VIF the VIF map neither names nor lets be inferred.
    VifNotInMap { vif } => "VIF_NOT_IN_MAP",
    /// The host has no management interface with an address.
    HostHasNoManagementIp {} => "HOST_HAS_NO_MANAGEMENT_IP",
    /// `VDI.pool_migrate` of a VDI no VBD of its VM holds.
    VbdMissing {} => "VBD_MISSING",
    /// `VDI.pool_migrate` of a VDI that no running VM has attached.
    VdiNeedsVmForMigrate { vdi } => "VDI_NEEDS_VM_FOR_MIGRATE",
    /// A disk's copy to its destination SR failed during a storage migration.
    MirrorFailed { vdi } => "MIRROR_FAILED",
    /// `host.shutdown`/`reboot` of a host that is still enabled.
    HostNotDisabled {} => "HOST_NOT_DISABLED",
    /// `host.shutdown`/`reboot` of a host something still runs on (`kind` is `vm`).
    HostInUse { host, kind, object } => "HOST_IN_USE",
    /// `host.power_on` of a host whose `power_on_mode` is empty.
    HostPowerOnModeDisabled {} => "HOST_POWER_ON_MODE_DISABLED",
    /// `host.enable` of a host shut down or rebooting: it comes back enabled after its boot.
    HostDisabledUntilReboot { host } => "HOST_DISABLED_UNTIL_REBOOT",
    /// `host.install_server_certificate`: the private key does not read.
    ServerCertificateKeyInvalid {} => "SERVER_CERTIFICATE_KEY_INVALID",
    /// `host.install_server_certificate`: the key is not RSA (`rsa`, `p256`, `ed25519`, …).
    ServerCertificateKeyAlgorithmNotSupported { algorithm_oid } => "SERVER_CERTIFICATE_KEY_ALGORITHM_NOT_SUPPORTED",
    /// `host.install_server_certificate`: an RSA key outside 2048–4096 bits.
    ServerCertificateKeyRsaLengthNotSupported { length } => "SERVER_CERTIFICATE_KEY_RSA_LENGTH_NOT_SUPPORTED",
    /// `host.install_server_certificate`: the certificate does not read.
    ServerCertificateInvalid {} => "SERVER_CERTIFICATE_INVALID",
    /// `host.install_server_certificate`: the certificate's validity has not begun.
    ServerCertificateNotValidYet { now, not_before } => "SERVER_CERTIFICATE_NOT_VALID_YET",
    /// `host.install_server_certificate`: the certificate's validity has ended.
    ServerCertificateExpired { now, not_after } => "SERVER_CERTIFICATE_EXPIRED",
    /// `host.install_server_certificate`: the key is not the certificate's.
    ServerCertificateKeyMismatch {} => "SERVER_CERTIFICATE_KEY_MISMATCH",
    /// `host.install_server_certificate`: signed with a hash other than SHA-256 or SHA-512.
    ServerCertificateSignatureNotSupported {} => "SERVER_CERTIFICATE_SIGNATURE_NOT_SUPPORTED",
    /// `host.install_server_certificate`: the chain given holds no readable certificate.
    ServerCertificateChainInvalid {} => "SERVER_CERTIFICATE_CHAIN_INVALID",
}

/// Codes the reference raises with more parameters than errors.json documents, and how many:
/// `VM_IS_TEMPLATE [vm, operation]` (xapi_vm_lifecycle.ml).
pub const EXTRA_PARAMS: &[(&str, usize)] = &[("VM_IS_TEMPLATE", 2)];

/// Codes the reference raises that errors.json leaves out (its datamodel declares them), with
/// their parameters: `PIF.introduce` of a NIC the host does not have (xapi_pif.ml).
pub const UNDOCUMENTED: &[(&str, &[&str])] = &[(
    "COULD_NOT_FIND_NETWORK_INTERFACE_WITH_SPECIFIED_DEVICE_NAME_AND_MAC_ADDRESS",
    &["device", "mac"],
)];

impl ApiError {
    /// Whose fault the failure is (the HTTP data paths answer 400 or 500 by it).
    pub fn fault(&self) -> Fault {
        match self {
            ApiError::SrBackendFailure { .. } | ApiError::VdiIoError { .. } | ApiError::InternalError { .. } => {
                Fault::Server
            }
            _ => Fault::Client,
        }
    }
    /// `HANDLE_INVALID [class, ref]`.
    pub fn handle_invalid(class: &str, handle: &str) -> Self {
        ApiError::HandleInvalid {
            class: class.to_owned(),
            handle: handle.to_owned(),
        }
    }
    /// `INTERNAL_ERROR [message]`.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        ApiError::InternalError {
            message: message.to_string(),
        }
    }
    /// `NOT_IMPLEMENTED [function]`.
    pub fn not_implemented(function: &str) -> Self {
        ApiError::NotImplemented {
            function: function.to_owned(),
        }
    }
    /// `FIELD_TYPE_ERROR [field]`.
    pub fn field_type(field: &str) -> Self {
        ApiError::FieldTypeError {
            field: field.to_owned(),
        }
    }
    /// `INVALID_VALUE [field, value]`.
    pub fn invalid_value(field: &str, value: impl std::fmt::Display) -> Self {
        ApiError::InvalidValue {
            field: field.to_owned(),
            value: value.to_string(),
        }
    }
    /// `OPERATION_NOT_ALLOWED [reason]`.
    pub fn not_allowed(reason: impl std::fmt::Display) -> Self {
        ApiError::OperationNotAllowed {
            reason: reason.to_string(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.code())?;
        for p in self.params() {
            write!(f, " {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::error_params;

    #[test]
    fn every_raised_code_matches_errors_json() {
        for (code, params) in RAISED {
            if let Some((_, names)) = UNDOCUMENTED.iter().find(|(c, _)| c == code) {
                let ours: Vec<&str> = params.iter().map(|p| p.trim_start_matches("r#")).collect();
                assert_eq!(ours.len(), names.len(), "{code}");
                assert!(error_params(code).is_none(), "{code} is documented now");
                continue;
            }
            let documented = error_params(code).unwrap_or_else(|| panic!("{code} is not in errors.json"));
            if let Some(names) = documented {
                let ours: Vec<&str> = params.iter().map(|p| p.trim_start_matches("r#")).collect();
                let want = EXTRA_PARAMS
                    .iter()
                    .find(|(c, _)| c == code)
                    .map_or(names.len(), |(_, n)| *n);
                assert_eq!(ours.len(), want, "{code}: {ours:?} vs {names:?}");
            }
        }
    }

    #[test]
    fn parameters_travel_in_order() {
        let e = ApiError::VmBadPowerState {
            vm: "OpaqueRef:a".into(),
            expected: "halted".into(),
            actual: "running".into(),
        };
        assert_eq!(e.code(), "VM_BAD_POWER_STATE");
        assert_eq!(e.params(), vec!["OpaqueRef:a", "halted", "running"]);
    }
}
