#!/usr/bin/env bash
# Regenerates conf/local.yaml and conf/cluster.example.yaml from the typed settings, so
# they always show every setting (tests/unit/test_config.py checks they do).
set -euo pipefail
cd "$(dirname "$0")/.."
P=.venv/bin/persona
{
  echo "# Every persona setting with its embedded default (what runs with no file at all)."
  echo "# Use: persona --config conf/local.yaml ...  or  PERSONA_CONFIG=conf/local.yaml"
  echo "# Any key can also come from the environment: PERSONA__SECTION__KEY=value."
  env -i PATH="$PATH" HOME="$HOME" $P config --yaml
} > conf/local.yaml
{
  echo "# A production-shaped example: a Spark standalone/YARN/k8s master, tables on object"
  echo "# storage, Redis online store and a SQL registry for Feast. Copy, edit, then"
  echo "#   persona --config conf/cluster.yaml build"
  echo "# spark.conf passes any Spark setting through (S3 credentials provider, executor"
  echo "# sizing, k8s image...). The Delta jars still come from the local cache (spark.jars)"
  echo "# and are shipped to executors by Spark."
  env -i PATH="$PATH" HOME="$HOME" \
    PERSONA_HOME=/srv/persona \
    PERSONA__WAREHOUSE=s3a://my-bucket/persona/warehouse \
    PERSONA__SPARK__MASTER=spark://spark-master.internal:7077 \
    PERSONA__SPARK__DRIVER_MEMORY=8g \
    PERSONA__SPARK__EXECUTOR_MEMORY=16g \
    PERSONA__SPARK__SHUFFLE_PARTITIONS=200 \
    PERSONA__SPARK__UI_ENABLED=true \
    "PERSONA__SPARK__CONF={spark.executor.cores: '4', spark.hadoop.fs.s3a.aws.credentials.provider: com.amazonaws.auth.DefaultAWSCredentialsProviderChain}" \
    PERSONA__FEAST__ONLINE_STORE=redis \
    PERSONA__FEAST__REDIS_CONNECTION=redis.internal:6379 \
    PERSONA__FEAST__REGISTRY_URL=postgresql+psycopg://feast:change-me@postgres.internal:5432/feast \
    $P config --yaml
} > conf/cluster.example.yaml
