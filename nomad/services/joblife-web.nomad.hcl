# Rendered by `joblife nomad render` from joblife's settings, job types and flavor
# catalogue. Change those and render again rather than editing this file.

job "joblife-web" {
  type        = "service"
  datacenters = ["*"]

  group "web" {
    count = 1

    network {
      port "http" {
        to = 8080
      }
    }

    service {
      provider = "nomad"
      name     = "joblife-web"
      port     = "http"

      check {
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    restart {
      attempts = 10
      interval = "30m"
      delay    = "15s"
      mode     = "delay"
    }

    task "web" {
      driver = "docker"

      config {
        image   = "joblife/worker:latest"
        command = "joblife"
        args    = ["web"]
        ports   = ["http"]
      }

      template {
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/joblife" -}}
          {{- range $key, $value := . }}
          {{- if not (eq $key "amqp_url" "attempt_secret_key" "data_dir" "nomad_token" "s3_access_key_id" "s3_secret_access_key" "web_address" "web_cookie_secure" "web_port" "web_users" "web_users_file" "worker_database_url") }}
          JOBLIFE_{{ $key | toUpper }}={{ $value.Value | toJSON }}
          {{- end }}
          {{- end }}
          {{- end }}
          EOT
        destination = "${NOMAD_SECRETS_DIR}/joblife.env"
        env         = true
        change_mode = "restart"
      }

      template {
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/joblife-web" -}}
          {{- range $key, $value := . }}
          {{- if not (eq $key "amqp_url" "attempt_secret_key" "data_dir" "database_url" "nomad_token" "s3_access_key_id" "s3_secret_access_key" "web_address" "web_cookie_secure" "web_port" "web_users" "web_users_file" "worker_database_url") }}
          JOBLIFE_{{ $key | toUpper }}={{ $value.Value | toJSON }}
          {{- end }}
          {{- end }}
          {{- end }}
          EOT
        destination = "${NOMAD_SECRETS_DIR}/joblife-web.env"
        env         = true
        change_mode = "restart"
      }

      template {
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/joblife-web" -}}
          {{- range $key, $value := . }}
          {{- if eq $key "web_users" }}{{ $value }}{{ end }}
          {{- end }}
          {{- end }}
          EOT
        destination = "${NOMAD_SECRETS_DIR}/web-users"
        perms       = "0600"
        change_mode = "noop"
      }

      env {
        JOBLIFE_WEB_ADDRESS       = "0.0.0.0"
        JOBLIFE_WEB_PORT          = "8080"
        JOBLIFE_WEB_COOKIE_SECURE = "true"
        JOBLIFE_WEB_USERS_FILE    = "${NOMAD_SECRETS_DIR}/web-users"
        JOBLIFE_DATA_DIR          = "${NOMAD_ALLOC_DIR}/joblife"
      }

      kill_signal  = "SIGTERM"
      kill_timeout = "10s"

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
