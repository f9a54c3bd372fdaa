-- One PostgreSQL for the compose stack: a database per component.
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
CREATE DATABASE campaigns;
