package e2e

import (
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/herald-im/herald/config"
)

// The compose example's files agree with each other and with the image,
// checked as far as can be without Docker: Herald's half is served for real
// by TestDeployHeraldConfigServes.

func readYAML(t *testing.T, path string, into any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func portOf(t *testing.T, hostport string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatalf("%q: %v", hostport, err)
	}
	return port
}

func TestComposeExampleIsConsistent(t *testing.T) {
	root := moduleRoot(t)
	heraldCfg, err := config.Load(filepath.Join(root, "deploy", "herald", "herald.yaml"), nil)
	if err != nil {
		t.Fatalf("deploy/herald/herald.yaml: %v", err)
	}
	if len(heraldCfg.Warnings) > 0 {
		t.Errorf("deploy/herald/herald.yaml warns: %q", heraldCfg.Warnings)
	}

	// The image sets no HERALD_ variable but HERALD_CONFIG: any other would
	// override the mounted file (HERALD_LISTEN once made Herald listen on
	// 8090 while Synapse and the published port expected 8443).
	docker, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	envs := regexp.MustCompile(`HERALD_[A-Z0-9_]+=(\S+)`).FindAllStringSubmatch(string(docker), -1)
	imageConfig := ""
	for _, m := range envs {
		if !strings.HasPrefix(m[0], "HERALD_CONFIG=") {
			t.Errorf("Dockerfile sets %s, which overrides every configuration file", m[0])
		} else {
			imageConfig = m[1]
		}
	}
	if imageConfig == "" || !strings.Contains(string(docker), "COPY deploy/image/herald.yaml "+imageConfig) {
		t.Errorf("Dockerfile: HERALD_CONFIG=%q is not the copied deploy/image/herald.yaml", imageConfig)
	}

	var compose struct {
		Name     string
		Services map[string]struct {
			Environment map[string]string
			Volumes     []string
			Ports       []string
		}
		Networks map[string]struct {
			IPAM struct{ Config []struct{ Subnet string } } `yaml:"ipam"`
		}
	}
	composePath := filepath.Join(root, "docker-compose.yml")
	readYAML(t, composePath, &compose)
	rawCompose, _ := os.ReadFile(composePath)
	if compose.Name == "" || !strings.Contains(string(rawCompose), "Compose v2") {
		t.Error("docker-compose.yml: a top-level name and the note that it needs Compose v2")
	}
	herald := compose.Services["herald"]
	for k := range herald.Environment {
		if strings.HasPrefix(k, "HERALD_") && k != "HERALD_CONFIG" {
			t.Errorf("docker-compose.yml sets %s for herald, overriding deploy/herald/herald.yaml", k)
		}
	}
	if !contains(herald.Volumes, "./deploy/herald/herald.yaml:"+imageConfig+":ro") {
		t.Errorf("herald volumes %q do not mount deploy/herald/herald.yaml at %s", herald.Volumes, imageConfig)
	}
	// The published ports are the ones Herald listens on.
	for _, want := range []string{portOf(t, heraldCfg.Listen) + ":" + portOf(t, heraldCfg.Listen), "127.0.0.1:" + portOf(t, heraldCfg.Admin.Listen) + ":" + portOf(t, heraldCfg.Admin.Listen)} {
		if !contains(herald.Ports, want) {
			t.Errorf("herald ports %q lack %s", herald.Ports, want)
		}
	}
	// The URLs in the comment are true: https with self_signed.
	scheme := "http"
	if heraldCfg.TLS.Enabled() {
		scheme = "https"
	}
	for _, u := range []string{heraldCfg.BaseURL(), scheme + "://127.0.0.1:" + portOf(t, heraldCfg.Admin.Listen) + "/admin"} {
		if !strings.Contains(string(rawCompose), u) {
			t.Errorf("docker-compose.yml's comment does not give %s", u)
		}
	}

	// Synapse points clients at Herald and can reach it.
	var hs map[string]any
	readYAML(t, filepath.Join(root, "deploy", "synapse", "homeserver.yaml"), &hs)
	if hs["default_identity_server"] != heraldCfg.BaseURL() {
		t.Errorf("Synapse default_identity_server %v, Herald is %s", hs["default_identity_server"], heraldCfg.BaseURL())
	}
	// Synapse serves /.well-known/matrix/client (with m.identity_server
	// from default_identity_server) only when public_baseurl is set.
	if s, _ := hs["public_baseurl"].(string); s == "" {
		t.Error("Synapse public_baseurl is not set: it would serve no client well-known")
	}
	hsName, _ := hs["server_name"].(string)
	if heraldCfg.Federation.Servers[hsName] == "" {
		t.Errorf("Herald's federation.servers does not name Synapse (%s)", hsName)
	}
	if u, err := url.Parse(heraldCfg.Federation.Servers[hsName]); err != nil || !strings.HasSuffix(u.Host, ":8008") {
		t.Errorf("Herald reaches Synapse at %v, Synapse listens on 8008", heraldCfg.Federation.Servers[hsName])
	}
	var subnets []string
	for _, n := range compose.Networks {
		for _, c := range n.IPAM.Config {
			subnets = append(subnets, c.Subnet)
		}
	}
	for _, r := range hs["ip_range_whitelist"].([]any) {
		if !contains(subnets, r.(string)) {
			t.Errorf("Synapse ip_range_whitelist %v is not the compose network's subnet %q", r, subnets)
		}
	}
}

// Every key of deploy/synapse/homeserver.yaml is one Synapse reads.
func TestSynapseConfigKeysExist(t *testing.T) {
	var hs map[string]any
	readYAML(t, filepath.Join(moduleRoot(t), "deploy", "synapse", "homeserver.yaml"), &hs)
	known := map[string]bool{}
	for _, k := range strings.Fields(synapseTopLevelKeys) {
		known[k] = true
	}
	var keys []string
	for k := range hs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !known[k] {
			t.Errorf("homeserver.yaml: %s is not a Synapse configuration key", k)
		}
	}
	listeners, _ := hs["listeners"].([]any)
	if len(listeners) == 0 {
		t.Fatal("homeserver.yaml: no listeners")
	}
	for i, l := range listeners {
		lm, _ := l.(map[string]any)
		for k := range lm {
			if !contains(strings.Fields(synapseListenerKeys), k) {
				t.Errorf("listeners[%d].%s is not a Synapse listener option", i, k)
			}
		}
		res, _ := lm["resources"].([]any)
		for j, r := range res {
			rm, _ := r.(map[string]any)
			for k := range rm {
				if k != "names" && k != "compress" {
					t.Errorf("listeners[%d].resources[%d].%s is not a Synapse resource option", i, j, k)
				}
			}
			names, _ := rm["names"].([]any)
			for _, n := range names {
				if !contains(strings.Fields(synapseResourceNames), n.(string)) {
					t.Errorf("listeners[%d].resources[%d]: %v is not a Synapse resource", i, j, n)
				}
			}
		}
	}
	db, _ := hs["database"].(map[string]any)
	for k := range db {
		if !contains([]string{"name", "txn_limit", "allow_unsafe_locale", "args"}, k) {
			t.Errorf("database.%s is not a Synapse database option", k)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// synapseTopLevelKeys are the top-level options of Synapse's configuration
// manual as of the Synapse 1.67-1.75 releases (matrix-org/synapse,
// docs/usage/configuration/config_documentation.md, its "### `key`"
// headings; refresh_access_token_lifetime there is spelt
// refreshable_access_token_lifetime in Synapse's code and example), plus
// use_insecure_ssl_client_just_for_testing_do_not_use, read by
// synapse/config/tls.py and not in the manual. serve_client_wellknown is
// not one: Synapse sets it internally when public_baseurl is given.
const synapseTopLevelKeys = `
modules server_name pid_file web_client_location public_baseurl serve_server_wellknown
extra_well_known_client_content soft_file_limit presence require_auth_for_profile_requests
limit_profile_requests_to_users_who_share_rooms include_profile_data_on_invite
allow_public_rooms_without_auth allow_public_rooms_over_federation default_room_version
gc_thresholds gc_min_interval filter_timeline_limit block_non_admin_invites enable_search
ip_range_blacklist ip_range_whitelist listeners manhole_settings dummy_events_threshold
delete_stale_devices_after email admin_contact hs_disabled hs_disabled_message
limit_usage_by_mau max_mau_value mau_trial_days mau_appservice_trial_days mau_limit_alerting
mau_stats_only mau_limit_reserved_threepids server_context limit_remote_rooms
require_membership_for_aliases allow_per_room_profiles max_avatar_size allowed_avatar_mimetypes
redaction_retention_period user_ips_max_age request_token_inhibit_3pid_errors
next_link_domain_whitelist templates retention tls_certificate_path tls_private_key_path
federation_verify_certificates federation_client_minimum_tls_version
federation_certificate_verification_whitelist federation_custom_ca_list
federation_domain_whitelist federation_metrics_domains allow_profile_lookup_over_federation
allow_device_name_lookup_over_federation event_cache_size caches database databases log_config
rc_message rc_registration rc_registration_token_validity rc_login rc_admin_redaction rc_joins
rc_joins_per_room rc_3pid_validation rc_invites rc_third_party_invite rc_federation
federation_rr_transactions_per_room_per_second enable_media_repo media_store_path
media_storage_providers max_upload_size max_image_pixels dynamic_thumbnails thumbnail_sizes
media_retention url_preview_enabled url_preview_ip_range_blacklist url_preview_ip_range_whitelist
url_preview_url_blacklist max_spider_size url_preview_accept_language oembed
recaptcha_public_key recaptcha_private_key enable_registration_captcha recaptcha_siteverify_api
turn_uris turn_shared_secret turn_username turn_password turn_user_lifetime turn_allow_guests
enable_registration enable_registration_without_verification registrations_require_3pid
disable_msisdn_registration allowed_local_3pids enable_3pid_lookup registration_requires_token
registration_shared_secret registration_shared_secret_path bcrypt_rounds allow_guest_access
default_identity_server account_threepid_delegates enable_set_displayname enable_set_avatar_url
enable_3pid_changes auto_join_rooms autocreate_auto_join_rooms
autocreate_auto_join_rooms_federated autocreate_auto_join_room_preset auto_join_mxid_localpart
auto_join_rooms_for_guests inhibit_user_in_use_error session_lifetime
refreshable_access_token_lifetime refresh_token_lifetime nonrefreshable_access_token_lifetime
enable_metrics sentry metrics_flags report_stats report_stats_endpoint room_prejoin_state
track_puppeted_user_ips app_service_config_files track_appservice_user_ips macaroon_secret_key
form_secret signing_key_path old_signing_keys key_refresh_interval trusted_key_servers
suppress_key_server_warning key_server_signing_keys_path saml2_config oidc_providers cas_config
sso jwt_config password_config ui_auth push encryption_enabled_by_default_for_room_type
user_directory user_consent stats server_notices enable_room_list_search alias_creation_rules
room_list_publication_rules default_power_level_content_override opentracing
worker_replication_secret start_pushers pusher_instances send_federation
federation_sender_instances instance_map stream_writers run_background_tasks_on
update_user_directory_from_worker notify_appservices_from_worker
media_instance_running_background_jobs redis worker_app worker_name worker_replication_host
worker_replication_http_port worker_replication_http_tls worker_listeners worker_manhole
worker_daemonize worker_pid_file worker_log_config background_updates
use_insecure_ssl_client_just_for_testing_do_not_use
`

// synapseListenerKeys and synapseResourceNames: the `listeners` section of
// the same manual.
const (
	synapseListenerKeys  = `port tag bind_addresses type tls x_forwarded request_id_header resources additional_resources`
	synapseResourceNames = `client consent federation keys media metrics openid replication static health`
)
