"""What tests and benchmarks share: servers started on loopback for a run
(``servers``), the whole-pipeline driver (``pipeline``), a local Spark standalone
cluster (``cluster``), planted test data (``sql_data``, ``fusion_data``) and the frozen
behaviour oracle (``behaviour_oracle``). No file here holds tests."""
