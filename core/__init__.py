"""What every floor of persona shares (the application ``persona``, the Spark jobs
``spark_jobs`` and the model code ``encoders`` may all import it; it imports none of
them): errors, the typed settings, the table registry, pseudonymisation, Delta log
reading with delta-rs, date parsing and the model registry. No pyspark, no TensorFlow,
no Feast here: importing ``core`` is cheap."""
