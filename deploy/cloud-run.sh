#!/usr/bin/env bash
# Deploy roomcast to Cloud Run. deploy/README.md explains each choice, and
# deploy/service.yaml says the same as a Knative service.
#
#   PROJECT=my-project REGION=europe-west1 deploy/cloud-run.sh
#
# The image is built from the repository's Dockerfile and pushed first, for
# example with
#
#   gcloud builds submit --tag "$IMAGE"
#
# which builds where Docker runs, in Cloud Build.
set -euo pipefail

PROJECT="${PROJECT:?set PROJECT to the Google Cloud project id}"
REGION="${REGION:?set REGION, such as europe-west1}"
SERVICE="${SERVICE:-roomcast}"
IMAGE="${IMAGE:-$REGION-docker.pkg.dev/$PROJECT/roomcast/roomcast:latest}"

# --timeout 3600: the longest Cloud Run allows; a WebSocket is a request and
#   ends at this timeout. roomcast asks clients to reconnect before it
#   (MAX_CONNECTION_AGE, 54 minutes +-10 %).
# --session-affinity: a reconnecting client goes back to the same instance
#   when it can (best effort).
# --concurrency 1000: the most Cloud Run allows; each WebSocket counts as one
#   request for the whole of its life, and one event loop serves thousands.
# --cpu 1: roomcast is one thread; a second CPU would sit idle.
# --memory 512Mi: with the message and queue limits below, 1,000 clients
#   that all hold the most they may still fit.
# --min-instances 1: no cold start for the first client after a quiet spell.
# --max-instances 1: a room lives in one instance; until rooms are shared
#   between instances, a second one would split rooms.
# probes: startup polls /healthz every second for up to 10 s (roomcast
#   listens within milliseconds); liveness restarts an instance whose loop
#   has not answered /healthz for 30 s.
STARTUP_PROBE="httpGet.path=/healthz,httpGet.port=8080,initialDelaySeconds=0"
STARTUP_PROBE+=",periodSeconds=1,timeoutSeconds=1,failureThreshold=10"
LIVENESS_PROBE="httpGet.path=/healthz,httpGet.port=8080"
LIVENESS_PROBE+=",periodSeconds=10,timeoutSeconds=1,failureThreshold=3"
# The limits that bound what one client can make roomcast hold (see
# deploy/README.md), the maximum age, the drain inside Cloud Run's 10 s, and
# the project that names traces in log lines.
ENV_VARS="GOOGLE_CLOUD_PROJECT=$PROJECT,MAX_CONNECTION_AGE=54m,DRAIN_TIMEOUT=8s"
ENV_VARS+=",MAX_MESSAGE_SIZE=65536,ECHO_MAX_MESSAGE_SIZE=65536,MAX_QUEUED_BYTES=262144"
ENV_VARS+=",LOG_LEVEL=info"

gcloud run deploy "$SERVICE" \
    --project "$PROJECT" \
    --region "$REGION" \
    --image "$IMAGE" \
    --port 8080 \
    --allow-unauthenticated \
    --timeout 3600 \
    --session-affinity \
    --concurrency 1000 \
    --cpu 1 \
    --memory 512Mi \
    --min-instances 1 \
    --max-instances 1 \
    --startup-probe "$STARTUP_PROBE" \
    --liveness-probe "$LIVENESS_PROBE" \
    --set-env-vars "$ENV_VARS"
