// Authentication, tenants, quotas, the separate worker port, TLS and mTLS (docs/security.md), against a
// real scheduler (SchedulerServer in this process) on 127.0.0.1. Certificates are made at test time
// with openssl; none is committed.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "server/auth.h"
#include "server/scheduler_server.h"
#include "server/tls_config.h"
#include "zoetrope/v1/video_service.grpc.pb.h"
#include "zoetrope/v1/worker_service.grpc.pb.h"

namespace zoetrope::server {
namespace {

namespace v1 = zoetrope::v1;
using ::testing::HasSubstr;

constexpr char kAcmeToken[] = "acme-token-0123456789abcdef";
constexpr char kGlobexToken[] = "globex-token-0123456789abcdef";
constexpr char kQueueToken[] = "queue-quota-token-0123456789";
constexpr char kRateToken[] = "rate-quota-token-0123456789";
constexpr char kWorkerToken[] = "worker-token-0123456789abcdef";

std::string Read(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = absl::StrCat(::testing::TempDir(), "/security_test_",
                              ::testing::UnitTest::GetInstance()->current_test_info()->name(), "_", getpid());
    std::filesystem::remove_all(directory_);
    std::filesystem::create_directories(directory_);
    tokens_file_ = directory_ + "/tokens";
    std::ofstream(tokens_file_) << "# tenants\n"
                                << "tenant acme\n"
                                << "tenant globex\n"
                                << "tenant queue max_queued=2\n"
                                << "tenant rate submits_per_minute=2\n"
                                << "token acme " << kAcmeToken << "\n"
                                << "token globex " << kGlobexToken << "\n"
                                << "token queue " << kQueueToken << "\n"
                                << "token rate " << kRateToken << "\n"
                                << "worker " << kWorkerToken << "\n";
  }
  void TearDown() override {
    server_.reset();
    std::filesystem::remove_all(directory_);
  }

  SchedulerServerOptions Options() {
    SchedulerServerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.worker_listen_address = "127.0.0.1:0";
    options.metrics_address = "";
    options.tokens_file = tokens_file_;
    options.scheduler.database_path = directory_ + "/jobs.db";
    options.scheduler.results_directory = directory_ + "/results";
    options.scheduler.models = {"tiny"};
    return options;
  }

  void Start(SchedulerServerOptions options) {
    absl::StatusOr<std::unique_ptr<SchedulerServer>> server = SchedulerServer::Start(std::move(options));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
  }

  std::unique_ptr<v1::VideoService::Stub> Public(std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr) {
    return v1::VideoService::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                            credentials != nullptr ? credentials : grpc::InsecureChannelCredentials()));
  }

  // A context with a short deadline and, when given, the bearer token.
  static std::unique_ptr<grpc::ClientContext> Context(const std::string& token) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    if (!token.empty()) context->AddMetadata("authorization", absl::StrCat("Bearer ", token));
    return context;
  }

  static grpc::Status Submit(v1::VideoService::Stub& stub, const std::string& token, v1::Job* job,
                             const std::string& prompt = "a red fox in the snow") {
    v1::SubmitJobRequest request;
    request.set_prompt(prompt);
    request.set_model("tiny");
    request.set_width(64);
    request.set_height(64);
    request.set_frames(5);
    request.set_steps(2);
    return stub.SubmitJob(Context(token).get(), request, job);
  }

  static int CountJobs(v1::VideoService::Stub& stub, const std::string& token) {
    v1::ListJobsRequest request;
    request.set_page_size(1000);
    v1::ListJobsResponse response;
    const grpc::Status status = stub.ListJobs(Context(token).get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.jobs_size();
  }

  // The status a worker stream on the worker port ends with after its hello.
  grpc::Status ConnectWorker(const std::string& token, std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr,
                             int port = 0) {
    auto stub = v1::WorkerService::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port != 0 ? port : server_->worker_port()),
                            credentials != nullptr ? credentials : grpc::InsecureChannelCredentials()));
    std::unique_ptr<grpc::ClientContext> context = Context(token);
    auto stream = stub->Connect(context.get());
    v1::WorkerMessage hello;
    hello.mutable_hello()->set_worker_id("security-test-worker");
    stream->Write(hello);
    stream->WritesDone();
    v1::SchedulerMessage ignored;
    while (stream->Read(&ignored)) {
    }
    return stream->Finish();
  }

  // CA, server certificate for 127.0.0.1/localhost, a worker client certificate, and a client
  // certificate of another CA.
  void MakeCertificates() {
    const std::string d = directory_;
    std::ofstream(d + "/san.cnf") << "subjectAltName=DNS:localhost,IP:127.0.0.1\n";
    const std::string key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    const std::string commands[] = {
        absl::StrCat("openssl req -x509 ", key, " -keyout ", d, "/ca.key -out ", d, "/ca.pem -days 1 -subj /CN=test-ca"),
        absl::StrCat("openssl req ", key, " -keyout ", d, "/server.key -out ", d, "/server.csr -subj /CN=localhost"),
        absl::StrCat("openssl x509 -req -in ", d, "/server.csr -CA ", d, "/ca.pem -CAkey ", d, "/ca.key -set_serial 2 -out ",
                     d, "/server.pem -days 1 -extfile ", d, "/san.cnf"),
        absl::StrCat("openssl req ", key, " -keyout ", d, "/client.key -out ", d, "/client.csr -subj /CN=worker"),
        absl::StrCat("openssl x509 -req -in ", d, "/client.csr -CA ", d, "/ca.pem -CAkey ", d, "/ca.key -set_serial 3 -out ",
                     d, "/client.pem -days 1"),
        absl::StrCat("openssl req -x509 ", key, " -keyout ", d, "/other-ca.key -out ", d,
                     "/other-ca.pem -days 1 -subj /CN=other-ca"),
        absl::StrCat("openssl req ", key, " -keyout ", d, "/other.key -out ", d, "/other.csr -subj /CN=intruder"),
        absl::StrCat("openssl x509 -req -in ", d, "/other.csr -CA ", d, "/other-ca.pem -CAkey ", d,
                     "/other-ca.key -set_serial 4 -out ", d, "/other.pem -days 1"),
    };
    for (const std::string& command : commands) {
      ASSERT_EQ(std::system((command + " >/dev/null 2>&1").c_str()), 0) << command;
    }
  }

  std::shared_ptr<grpc::ChannelCredentials> Tls(const std::string& client = "") {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = Read(directory_ + "/ca.pem");
    if (!client.empty()) {
      options.pem_cert_chain = Read(absl::StrCat(directory_, "/", client, ".pem"));
      options.pem_private_key = Read(absl::StrCat(directory_, "/", client, ".key"));
    }
    return grpc::SslCredentials(options);
  }

  std::string directory_;
  std::string tokens_file_;
  std::unique_ptr<SchedulerServer> server_;
};

TEST(TokenRegistryTest, ParsesTenantsQuotasAndTokensAndRejectsBadFiles) {
  absl::StatusOr<TokenRegistry> registry = TokenRegistry::Parse(
      "tenant a max_queued=3 max_running=1 submits_per_minute=9  # quotas\n"
      "token a aaaaaaaaaaaaaaaa\nworker wwwwwwwwwwwwwwww\n",
      "tokens");
  ASSERT_TRUE(registry.ok()) << registry.status();
  ASSERT_EQ(registry->tenants().size(), 1u);
  EXPECT_EQ(registry->tenants()[0].quota.max_queued, 3);
  EXPECT_EQ(registry->tenants()[0].quota.max_running, 1);
  EXPECT_EQ(registry->tenants()[0].quota.submits_per_minute, 9);
  CallMetadata metadata;
  const std::string header = "Bearer aaaaaaaaaaaaaaaa";
  metadata.emplace("authorization", header);
  absl::StatusOr<Tenant> tenant = registry->AuthenticateClient(metadata);
  ASSERT_TRUE(tenant.ok()) << tenant.status();
  EXPECT_EQ(tenant->name, "a");
  EXPECT_TRUE(absl::IsUnauthenticated(registry->AuthenticateWorker(metadata)));

  // Each failure names the line; a token's text never appears in an error.
  absl::StatusOr<TokenRegistry> short_token = TokenRegistry::Parse("tenant a\ntoken a short\n", "tokens");
  EXPECT_TRUE(absl::IsInvalidArgument(short_token.status()));
  EXPECT_THAT(std::string(short_token.status().message()), HasSubstr("tokens:2"));
  absl::StatusOr<TokenRegistry> unknown = TokenRegistry::Parse("token nobody aaaaaaaaaaaaaaaa\n", "tokens");
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("no `tenant nobody` line"));
  EXPECT_THAT(std::string(unknown.status().message()), ::testing::Not(HasSubstr("aaaaaaaaaaaaaaaa")));
  EXPECT_FALSE(TokenRegistry::Parse("tenant a\ntoken a aaaaaaaaaaaaaaaa\nworker aaaaaaaaaaaaaaaa\n", "t").ok());
  EXPECT_FALSE(TokenRegistry::Parse("tenant a max_qeued=1\n", "t").ok());
}

TEST_F(SecurityTest, CallsWithoutAValidClientTokenAreUnauthenticated) {
  Start(Options());
  auto stub = Public();
  v1::Job job;
  for (const std::string& token : {std::string(), std::string("not-a-token-at-all-0000"), std::string(kWorkerToken)}) {
    EXPECT_EQ(Submit(*stub, token, &job).error_code(), grpc::StatusCode::UNAUTHENTICATED) << token;
    v1::ListJobsResponse list;
    EXPECT_EQ(stub->ListJobs(Context(token).get(), v1::ListJobsRequest(), &list).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
    v1::GetJobRequest get;
    get.set_id("anything");
    EXPECT_EQ(stub->GetJob(Context(token).get(), get, &job).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  // Malformed metadata (no "Bearer" scheme) is also UNAUTHENTICATED.
  auto context = Context("");
  context->AddMetadata("authorization", kAcmeToken);
  v1::ListJobsResponse list;
  EXPECT_EQ(stub->ListJobs(context.get(), v1::ListJobsRequest(), &list).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(CountJobs(*stub, kAcmeToken), 0);
}

TEST_F(SecurityTest, ATenantSeesAndTouchesOnlyItsOwnJobs) {
  Start(Options());
  auto stub = Public();
  v1::Job acme_job;
  ASSERT_TRUE(Submit(*stub, kAcmeToken, &acme_job).ok());
  EXPECT_EQ(acme_job.tenant(), "acme");

  v1::Job job;
  v1::GetJobRequest get;
  get.set_id(acme_job.id());
  EXPECT_TRUE(stub->GetJob(Context(kAcmeToken).get(), get, &job).ok());
  const grpc::Status foreign_get = stub->GetJob(Context(kGlobexToken).get(), get, &job);
  EXPECT_EQ(foreign_get.error_code(), grpc::StatusCode::NOT_FOUND);
  // Worded exactly as for an id that does not exist.
  get.set_id("no-such-job");
  EXPECT_EQ(stub->GetJob(Context(kGlobexToken).get(), get, &job).error_message(),
            absl::StrCat("id: no job \"no-such-job\""));
  EXPECT_EQ(foreign_get.error_message(), absl::StrCat("id: no job \"", acme_job.id(), "\""));

  v1::CancelJobRequest cancel;
  cancel.set_id(acme_job.id());
  EXPECT_EQ(stub->CancelJob(Context(kGlobexToken).get(), cancel, &job).error_code(), grpc::StatusCode::NOT_FOUND);
  v1::WatchJobRequest watch;
  watch.set_id(acme_job.id());
  {
    auto context = Context(kGlobexToken);
    auto reader = stub->WatchJob(context.get(), watch);
    v1::JobEvent event;
    EXPECT_FALSE(reader->Read(&event));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
  }
  v1::FetchResultRequest fetch;
  fetch.set_id(acme_job.id());
  {
    auto context = Context(kGlobexToken);
    auto reader = stub->FetchResult(context.get(), fetch);
    v1::ResultChunk chunk;
    EXPECT_FALSE(reader->Read(&chunk));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
  }
  // The foreign cancel changed nothing.
  get.set_id(acme_job.id());
  ASSERT_TRUE(stub->GetJob(Context(kAcmeToken).get(), get, &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_QUEUED);
  EXPECT_FALSE(job.cancel_requested());

  EXPECT_EQ(CountJobs(*stub, kAcmeToken), 1);
  EXPECT_EQ(CountJobs(*stub, kGlobexToken), 0);
  // The owner may cancel.
  EXPECT_TRUE(stub->CancelJob(Context(kAcmeToken).get(), cancel, &job).ok());
}

TEST_F(SecurityTest, QueuedJobsQuotaIsResourceExhaustedNamingItAndChangesNothing) {
  Start(Options());
  auto stub = Public();
  v1::Job job;
  ASSERT_TRUE(Submit(*stub, kQueueToken, &job, "one").ok());
  ASSERT_TRUE(Submit(*stub, kQueueToken, &job, "two").ok());
  const grpc::Status third = Submit(*stub, kQueueToken, &job, "three");
  EXPECT_EQ(third.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(third.error_message(), HasSubstr("max_queued"));
  EXPECT_EQ(CountJobs(*stub, kQueueToken), 2);
  // Another tenant is not limited by it.
  EXPECT_TRUE(Submit(*stub, kAcmeToken, &job).ok());
  // A cancelled job frees its slot.
  v1::ListJobsResponse list;
  ASSERT_TRUE(stub->ListJobs(Context(kQueueToken).get(), v1::ListJobsRequest(), &list).ok());
  v1::CancelJobRequest cancel;
  cancel.set_id(list.jobs(0).id());
  ASSERT_TRUE(stub->CancelJob(Context(kQueueToken).get(), cancel, &job).ok());
  EXPECT_TRUE(Submit(*stub, kQueueToken, &job, "three").ok());
}

TEST_F(SecurityTest, SubmissionsPerMinuteQuotaIsResourceExhaustedNamingItAndChangesNothing) {
  Start(Options());
  auto stub = Public();
  v1::Job job;
  ASSERT_TRUE(Submit(*stub, kRateToken, &job, "one").ok());
  ASSERT_TRUE(Submit(*stub, kRateToken, &job, "two").ok());
  const grpc::Status third = Submit(*stub, kRateToken, &job, "three");
  EXPECT_EQ(third.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(third.error_message(), HasSubstr("submits_per_minute"));
  EXPECT_EQ(CountJobs(*stub, kRateToken), 2);
}

TEST_F(SecurityTest, WorkerPortTakesOnlyWorkerTokensAndPublicPortOnlyClientTokens) {
  Start(Options());
  ASSERT_NE(server_->worker_port(), server_->port());
  EXPECT_EQ(ConnectWorker("").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(ConnectWorker(kAcmeToken).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(ConnectWorker(kWorkerToken).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // The public port does not serve the worker API at all, nor the worker port the public one.
  EXPECT_EQ(ConnectWorker(kWorkerToken, nullptr, server_->port()).error_code(), grpc::StatusCode::UNIMPLEMENTED);
  auto on_worker_port = v1::VideoService::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->worker_port()), grpc::InsecureChannelCredentials()));
  v1::ListJobsResponse list;
  EXPECT_EQ(on_worker_port->ListJobs(Context(kAcmeToken).get(), v1::ListJobsRequest(), &list).error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
}

TEST_F(SecurityTest, WithoutTokensOnlyLoopbackUnlessAllowed) {
  SchedulerServerOptions options = Options();
  options.tokens_file = "";
  options.worker_listen_address = "";
  options.listen_address = "0.0.0.0:0";
  absl::StatusOr<std::unique_ptr<SchedulerServer>> refused = SchedulerServer::Start(options);
  EXPECT_TRUE(absl::IsFailedPrecondition(refused.status())) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("--allow_unauthenticated_remote"));

  // Tokens without a worker port of its own are refused too.
  options = Options();
  options.worker_listen_address = "";
  EXPECT_TRUE(absl::IsInvalidArgument(SchedulerServer::Start(options).status()));

  // Loopback without tokens: the zero-config development mode, everything allowed.
  options = Options();
  options.tokens_file = "";
  options.worker_listen_address = "";
  Start(options);
  auto stub = Public();
  v1::Job job;
  EXPECT_TRUE(Submit(*stub, "", &job).ok());
  EXPECT_EQ(CountJobs(*stub, ""), 1);
  EXPECT_EQ(server_->worker_port(), server_->port());
  server_.reset();

  options = Options();
  options.tokens_file = "";
  options.worker_listen_address = "";
  options.listen_address = "0.0.0.0:0";
  options.allow_unauthenticated_remote = true;
  options.scheduler.database_path = directory_ + "/jobs2.db";
  Start(options);
}

TEST_F(SecurityTest, TlsAndWorkerMtlsHandshakesNeedTheRightCertificates) {
  MakeCertificates();
  SchedulerServerOptions options = Options();
  options.tls_cert_file = directory_ + "/server.pem";
  options.tls_key_file = directory_ + "/server.key";
  options.worker_client_ca_file = directory_ + "/ca.pem";
  Start(options);

  v1::ListJobsResponse list;
  EXPECT_TRUE(Public(Tls())->ListJobs(Context(kAcmeToken).get(), v1::ListJobsRequest(), &list).ok());
  // Plaintext to a TLS port fails the handshake.
  EXPECT_EQ(Public()->ListJobs(Context(kAcmeToken).get(), v1::ListJobsRequest(), &list).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  // TLS to a server whose certificate another CA signed fails.
  grpc::SslCredentialsOptions wrong_ca;
  wrong_ca.pem_root_certs = Read(directory_ + "/other-ca.pem");
  EXPECT_EQ(Public(grpc::SslCredentials(wrong_ca))
                ->ListJobs(Context(kAcmeToken).get(), v1::ListJobsRequest(), &list)
                .error_code(),
            grpc::StatusCode::UNAVAILABLE);

  // The worker port: the CA's client certificate passes the handshake (and the token then counts).
  const grpc::Status with_certificate = ConnectWorker(kWorkerToken, Tls("client"));
  EXPECT_NE(with_certificate.error_code(), grpc::StatusCode::UNAVAILABLE) << with_certificate.error_message();
  EXPECT_NE(with_certificate.error_code(), grpc::StatusCode::UNAUTHENTICATED) << with_certificate.error_message();
  EXPECT_EQ(ConnectWorker("", Tls("client")).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // No client certificate, or one of another CA: no handshake.
  EXPECT_EQ(ConnectWorker(kWorkerToken, Tls()).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(ConnectWorker(kWorkerToken, Tls("other")).error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST(TlsConfigTest, LoopbackAddresses) {
  EXPECT_TRUE(IsLoopbackListenAddress("127.0.0.1:50051"));
  EXPECT_TRUE(IsLoopbackListenAddress("localhost:0"));
  EXPECT_TRUE(IsLoopbackListenAddress("[::1]:50051"));
  EXPECT_FALSE(IsLoopbackListenAddress("0.0.0.0:50051"));
  EXPECT_FALSE(IsLoopbackListenAddress("[::]:50051"));
  EXPECT_FALSE(IsLoopbackListenAddress("10.0.0.5:50051"));
}

}  // namespace
}  // namespace zoetrope::server
