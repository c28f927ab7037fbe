/*
 * persona's SQL server: Spark's Thrift JDBC/ODBC server (HiveServer2) over the Delta
 * tables, with the curated views registered and every write refused.
 *
 * Input: argv[0] is a file of setup statements (CREATE DATABASE / CREATE VIEW, each
 * followed by a line holding only ";"), written by persona/sql/thrift.py. They run in
 * this JVM before the port opens; then the guard is locked and the Thrift service
 * starts on the host/port given by spark.hadoop.hive.server2.thrift.{bind.host,port}.
 *
 * Why a guard: Spark SQL has no read-only mode and the Thrift server no authorization,
 * so any client could run DELETE FROM or INSERT INTO a Delta table. The guard is a
 * Catalyst check rule (spark.sql.extensions) that rejects every command except the
 * metadata ones a client needs (USE, SET, SHOW, DESCRIBE, EXPLAIN), and the
 * reflect()/java_method() functions that would call arbitrary Java methods.
 */
package persona.sql;

import java.io.Serializable;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.Arrays;
import java.util.HashSet;
import java.util.Set;

import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.SparkSessionExtensions;
import org.apache.spark.sql.catalyst.expressions.Expression;
import org.apache.spark.sql.catalyst.expressions.SubqueryExpression;
import org.apache.spark.sql.catalyst.plans.logical.Command;
import org.apache.spark.sql.catalyst.plans.logical.LogicalPlan;
import org.apache.spark.sql.hive.thriftserver.HiveThriftServer2;

import scala.Function1;
import scala.runtime.AbstractFunction1;
import scala.runtime.BoxedUnit;

public final class ReadOnlyThriftServer {

    /** False while the setup statements run in main(); true for ever after. */
    static volatile boolean locked = false;

    /** Commands that only read metadata or session state. Matched by simple class name
     *  so one list covers the v1 and v2 command classes across Spark versions. */
    static final Set<String> ALLOWED = new HashSet<>(Arrays.asList(
        "SetCommand", "ResetCommand", "SetCatalogAndNamespace", "SetNamespaceCommand",
        "SetCatalogCommand", "ShowTables", "ShowTablesExtended", "ShowTablesCommand",
        "ShowNamespaces", "ShowNamespacesCommand", "ShowViews", "ShowViewsCommand",
        "ShowColumns", "ShowColumnsCommand", "ShowFunctions", "ShowFunctionsCommand",
        "ShowTableProperties", "ShowTablePropertiesCommand", "ShowCreateTable",
        "ShowCreateTableCommand", "ShowCreateTableAsSerdeCommand", "ShowPartitions",
        "ShowPartitionsCommand", "ShowCatalogs", "ShowCatalogsCommand",
        "ShowCurrentNamespace", "ShowCurrentNamespaceCommand", "DescribeRelation",
        "DescribeColumn", "DescribeNamespace", "DescribeFunction", "DescribeTableCommand",
        "DescribeColumnCommand", "DescribeDatabaseCommand", "DescribeFunctionCommand",
        "DescribeQueryCommand", "ExplainCommand", "DescribeDeltaDetailCommand",
        "DescribeDeltaHistory", "DescribeDeltaHistoryCommand"));

    /** Registered through spark.sql.extensions (needs a public no-arg constructor). */
    public static final class Extension
            extends AbstractFunction1<SparkSessionExtensions, BoxedUnit> implements Serializable {
        @Override
        public BoxedUnit apply(SparkSessionExtensions ext) {
            ext.injectCheckRule(new RuleBuilder());
            return BoxedUnit.UNIT;
        }
    }

    static final class RuleBuilder
            extends AbstractFunction1<SparkSession, Function1<LogicalPlan, BoxedUnit>> implements Serializable {
        @Override
        public Function1<LogicalPlan, BoxedUnit> apply(SparkSession session) {
            return new Guard();
        }
    }

    static final class Guard extends AbstractFunction1<LogicalPlan, BoxedUnit> implements Serializable {
        @Override
        public BoxedUnit apply(LogicalPlan plan) {
            if (locked) {
                check(plan);
            }
            return BoxedUnit.UNIT;
        }
    }

    static void refuse(String what) {
        // SecurityException: the Thrift server returns its message to the client as the
        // statement's error; clients print it as one line.
        throw new SecurityException("persona sql-server is read-only: " + what + " is not allowed");
    }

    static void check(LogicalPlan plan) {
        if (plan instanceof Command && !ALLOWED.contains(plan.getClass().getSimpleName())) {
            refuse(plan.nodeName() + " (a statement that writes or changes the catalog)");
        }
        scala.collection.Iterator<Expression> exprs = plan.expressions().iterator();
        while (exprs.hasNext()) {
            checkExpression(exprs.next());
        }
        scala.collection.Iterator<LogicalPlan> children = plan.children().iterator();
        while (children.hasNext()) {
            check(children.next());
        }
    }

    static void checkExpression(Expression e) {
        // reflect(), java_method(), try_reflect(): arbitrary static Java calls.
        if (e.getClass().getSimpleName().contains("Reflect")) {
            refuse("reflect()/java_method()");
        }
        if (e instanceof SubqueryExpression) {
            check(((SubqueryExpression) e).plan());
        }
        scala.collection.Iterator<Expression> children = e.children().iterator();
        while (children.hasNext()) {
            checkExpression(children.next());
        }
    }

    public static void main(String[] args) throws Exception {
        SparkSession spark = SparkSession.builder().getOrCreate();
        if (args.length > 0) {
            String text = new String(Files.readAllBytes(Paths.get(args[0])), StandardCharsets.UTF_8);
            for (String stmt : text.split("\n;\n")) {
                if (stmt.trim().isEmpty()) {
                    continue;
                }
                try {
                    spark.sql(stmt);
                } catch (Exception exc) {
                    String first = String.valueOf(exc.getMessage()).split("\n")[0];
                    System.err.println("persona-setup-failed: " + first);
                    System.err.println("statement: " + stmt.split("\n")[0]);
                    System.exit(2);
                }
            }
        }
        locked = true;
        try {
            HiveThriftServer2.startWithSparkSession(spark, false);
        } catch (Exception exc) {
            // e.g. the port is taken: exit instead of idling with a live SparkContext.
            Throwable root = exc;
            while (root.getCause() != null) {
                root = root.getCause();
            }
            System.err.println("persona-server-failed: " + root);
            System.exit(3);
        }
        System.out.println("persona-sql-server-ready");
        System.out.flush();
        // The Thrift service runs on its own threads; keep main alive until the JVM is
        // asked to stop (SIGTERM runs Spark's shutdown hooks, which stop the server).
        Thread.currentThread().join();
    }
}
