// Sample (not built by the repository's tests): see VoxpipeNpcComponent.h.
#include "VoxpipeNpcComponent.h"

#include "Components/AudioComponent.h"
#include "Sound/SoundWaveProcedural.h"
#include "WebSocketsModule.h"

// nlohmann throws on misuse; Unreal builds without exceptions (Build.cs defines JSON_NOEXCEPTION), so
// the protocol code uses only non-throwing paths (from_msgpack/parse with allow_exceptions=false, find()).
// voxpipe_protocol.hpp comes in through the header (ResumeState is a member).

struct FVoxpipeFrame
{
    voxpipe::Frame Frame;
};

static constexpr int32 MicRate = 16000;
static constexpr int32 MicFrameSamples = MicRate / 50;  // 20 ms

UVoxpipeNpcComponent::UVoxpipeNpcComponent()
{
    PrimaryComponentTick.bCanEverTick = true;
}

void UVoxpipeNpcComponent::BeginPlay()
{
    Super::BeginPlay();

    Wave = NewObject<USoundWaveProcedural>(this);
    Wave->SetSampleRate(OutRate);
    Wave->NumChannels = 1;
    Wave->Duration = INDEFINITELY_LOOPING_DURATION;
    Wave->SoundGroup = SOUNDGROUP_Voice;
    Wave->bLooping = false;
    Speaker = NewObject<UAudioComponent>(GetOwner());
    Speaker->SetupAttachment(GetOwner()->GetRootComponent());
    Speaker->RegisterComponent();
    Speaker->SetSound(Wave);
    Speaker->Play();

    OpenSocket(/*bResume=*/false);
}

// One socket: a fresh session, or (bResume) hello.resume with ?session= so a balancer routes it back.
void UVoxpipeNpcComponent::OpenSocket(bool bResume)
{
    CloseSocket();
    bResuming = bResume && Resume.can_resume();
    FString Url = ServerUrl;
    if (bResuming)
    {
        Url += (ServerUrl.Contains(TEXT("?")) ? TEXT("&session=") : TEXT("?session="));
        Url += UTF8_TO_TCHAR(voxpipe::ResumeState::url_escape(Resume.session()).c_str());
    }
    FatalCode.clear();
    Socket = FWebSocketsModule::Get().CreateWebSocket(Url, TEXT(""));
    Socket->OnConnected().AddLambda([this]()
    {
        voxpipe::HelloOptions Hello;
        Hello.in_rate = MicRate;
        Hello.out_rate = OutRate;
        Hello.aec = bClientHasEchoCancellation;
        Hello.system_prompt = TCHAR_TO_UTF8(*SystemPrompt);
        const voxpipe::ResumeRequest Request = Resume.request();
        SendFrame({voxpipe::hello(Hello, voxpipe::Framing::Msgpack, bResuming ? &Request : nullptr)});
    });
    Socket->OnConnectionError().AddLambda([this](const FString& Error)
    {
        UE_LOG(LogTemp, Warning, TEXT("voxpipe: connection failed: %s"), *Error);
        OnSocketEnded(-1, Error);
    });
    Socket->OnClosed().AddLambda([this](int32 Code, const FString& Reason, bool bClean)
    {
        UE_LOG(LogTemp, Log, TEXT("voxpipe: closed %d %s"), Code, *Reason);
        OnSocketEnded(bClean ? Code : -1, Reason);
    });
    // Binary frames arrive here, possibly in fragments (BytesRemaining > 0 until the last one).
    Socket->OnRawMessage().AddUObject(this, &UVoxpipeNpcComponent::OnRawMessage);
    Socket->Connect();
}

void UVoxpipeNpcComponent::CloseSocket()
{
    if (!Socket.IsValid()) return;
    Socket->OnConnected().Clear();
    Socket->OnConnectionError().Clear();
    Socket->OnClosed().Clear();
    Socket->OnRawMessage().Clear();
    if (Socket->IsConnected()) Socket->Close();
    Socket.Reset();
    Partial.Reset();
}

// The socket is gone (or an attempt failed): resume after a backoff, or stop for good.
void UVoxpipeNpcComponent::OnSocketEnded(int32 Code, const FString& Why)
{
    const bool bWasReady = bReady;
    bReady = false;
    if (bEnding || !bEverReady) return;  // EndPlay, or the first connection failed: nothing to resume
    if (bWasReady && voxpipe::ResumeState::ends_for_good(Code, FatalCode))
    {
        UE_LOG(LogTemp, Warning, TEXT("voxpipe: the conversation ended (%d %s)"), Code, *Why);
        return;
    }
    if (!bWasReady && !FatalCode.empty() && voxpipe::ResumeState::ends_for_good(-1, FatalCode))
    {
        UE_LOG(LogTemp, Warning, TEXT("voxpipe: the resume was refused for good (%s)"), UTF8_TO_TCHAR(FatalCode.c_str()));
        return;
    }
    if (bWasReady)
    {
        Attempt = 0;
        Wave->ResetAudio();  // the turn in flight was cut at what was played; no more of it comes
        SetHeld(false);
        PlayingTurn = -1;
        QueuedBytesOfTurn = 0;
    }
    if (++Attempt > 16)
    {
        UE_LOG(LogTemp, Warning, TEXT("voxpipe: no resume after 16 attempts; giving up"));
        return;
    }
    const int32 DelayMs = voxpipe::ResumeState::backoff_ms(Attempt, 250, 5000, FMath::FRand());
    UE_LOG(LogTemp, Log, TEXT("voxpipe: reconnecting, attempt %d in %d ms"), Attempt, DelayMs);
    // SetTimer with a rate of 0 clears the timer: the first attempt (0 ms) waits one millisecond.
    GetWorld()->GetTimerManager().SetTimer(ReconnectTimer, FTimerDelegate::CreateWeakLambda(this, [this]()
    {
        OpenSocket(/*bResume=*/true);
    }), FMath::Max(DelayMs, 1) / 1000.f, false);
}

void UVoxpipeNpcComponent::SendFrame(const FVoxpipeFrame& F)
{
    if (Socket.IsValid() && Socket->IsConnected())
    {
        Socket->Send(F.Frame.bytes.data(), F.Frame.bytes.size(), F.Frame.binary);
    }
}

void UVoxpipeNpcComponent::OnRawMessage(const void* Data, SIZE_T Size, SIZE_T BytesRemaining)
{
    Partial.Append(static_cast<const uint8*>(Data), Size);
    if (BytesRemaining == 0)
    {
        HandleMessage(Partial);
        Partial.Reset();
    }
}

void UVoxpipeNpcComponent::HandleMessage(const TArray<uint8>& Bytes)
{
    const voxpipe::Message M = voxpipe::decode(Bytes.GetData(), Bytes.Num(), /*binary=*/true);
    if (M.type == "ready")
    {
        const bool bResumed = Resume.on_ready(M);
        bReady = true;
        Attempt = 0;
        if (bEverReady)
        {
            if (!bResumed) CutTurns.Reset();  // a new session numbers its turns from 1 again
            OnReconnected.Broadcast(bResumed ? 1 : 0, UTF8_TO_TCHAR(M.session.c_str()));
        }
        else
        {
            StartMicrophone();
        }
        bEverReady = true;
        return;
    }
    if (!bReady)  // before this socket's ready: a refused hello or resume (resume_failed, shutting_down, ...)
    {
        if (M.type == "error" && M.fatal) FatalCode = M.code;
        if (M.type == "error") UE_LOG(LogTemp, Log, TEXT("voxpipe %s: %s"), UTF8_TO_TCHAR(M.code.c_str()), UTF8_TO_TCHAR(M.message.c_str()));
        return;
    }
    if (!Resume.accept(M)) return;  // a replayed message already handled
    if (M.type == "error" && M.fatal) FatalCode = M.code;  // going_away: the close follows, then a resume
    if (M.type == "audio")
    {
        if (CutTurns.Contains(M.turn)) return;  // the server sends none after `interrupted`; cheap to guard
        if (M.turn != PlayingTurn) { PlayingTurn = M.turn; QueuedBytesOfTurn = 0; }
        const int32 NumBytes = M.pcm.size() * sizeof(int16);
        Wave->QueueAudio(reinterpret_cast<const uint8*>(M.pcm.data()), NumBytes);  // PCM16, host order
        QueuedBytesOfTurn += NumBytes;
    }
    else if (M.type == "agent_paused")
    {
        SetHeld(true);  // hold where it is; what Wave has queued stays for agent_resumed
        OnAgentPaused.Broadcast(M.turn);
    }
    else if (M.type == "agent_resumed")
    {
        SetHeld(false);  // a backchannel or a cough: on from where it was held, nothing lost
        OnAgentResumed.Broadcast(M.turn);
    }
    else if (M.type == "interrupted")
    {
        CutTurns.Add(M.turn);
        Wave->ResetAudio();  // flush what is buffered: the player hears the cut at once
        SetHeld(false);      // the turn a pause held is over; the next one plays
        QueuedBytesOfTurn = 0;
        PlayingTurn = -1;
    }
    else if (M.type == "reply")
    {
        OnReply.Broadcast(M.turn, UTF8_TO_TCHAR(M.text.c_str()));
    }
    else if (M.type == "transcript" && M.final)
    {
        OnTranscript.Broadcast(M.turn, UTF8_TO_TCHAR(M.text.c_str()));
    }
    else if (M.type == "error" && M.code != "going_away")  // going_away: handled by the resume
    {
        UE_LOG(LogTemp, Warning, TEXT("voxpipe %s: %s"), UTF8_TO_TCHAR(M.code.c_str()), UTF8_TO_TCHAR(M.message.c_str()));
    }
}

// Paused, the audio component pulls nothing from Wave, so its queue (and the played count below) stands still.
void UVoxpipeNpcComponent::SetHeld(bool bHold)
{
    if (bHeld == bHold) return;
    bHeld = bHold;
    Speaker->SetPaused(bHold);
}

void UVoxpipeNpcComponent::StartMicrophone()
{
    Audio::FAudioCaptureDeviceParams Params;  // default input device
    auto OnCapture = [this](const void* InAudio, int32 NumFrames, int32 NumChannels, int32 SampleRate, double, bool)
    {
        // Capture thread: downmix to mono, resample to 16 kHz (linear is fine for speech), cut 20 ms frames.
        const float* In = static_cast<const float*>(InAudio);
        const double Step = double(SampleRate) / MicRate;
        for (; MicResamplePos < NumFrames; MicResamplePos += Step)
        {
            const int32 Index = int32(MicResamplePos);
            float Sum = 0.f;
            for (int32 C = 0; C < NumChannels; ++C) Sum += In[Index * NumChannels + C];
            MicPending.Add(int16(FMath::Clamp(Sum / NumChannels, -1.f, 1.f) * 32767.f));
            if (MicPending.Num() == MicFrameSamples)
            {
                MicFrames.Enqueue(MoveTemp(MicPending));
                MicPending.Reset(MicFrameSamples);
            }
        }
        MicResamplePos -= NumFrames;
    };
    if (Capture.OpenAudioCaptureStream(Params, MoveTemp(OnCapture), 960))
    {
        Capture.StartStream();
    }
}

void UVoxpipeNpcComponent::TickComponent(float DeltaTime, ELevelTick TickType, FActorComponentTickFunction* Tick)
{
    Super::TickComponent(DeltaTime, TickType, Tick);
    if (!bReady) return;
    TArray<int16> Frame;
    while (MicFrames.Dequeue(Frame))
    {
        SendFrame({voxpipe::audio(Frame.GetData(), Frame.Num(), voxpipe::Framing::Msgpack)});
    }
    AckTimer += DeltaTime;
    if (AckTimer >= 0.1f && PlayingTurn >= 0)
    {
        AckTimer = 0.f;
        // Played = handed to the wave minus what it still holds (unchanged while held).
        const int64 PlayedBytes = QueuedBytesOfTurn - Wave->GetAvailableAudioByteCount();
        SendFrame({voxpipe::played(PlayingTurn, PlayedBytes * 500.0 / OutRate, voxpipe::Framing::Msgpack)});
    }
}

void UVoxpipeNpcComponent::Say(const FString& Line)
{
    SendFrame({voxpipe::say(TCHAR_TO_UTF8(*Line), voxpipe::Framing::Msgpack)});
}

void UVoxpipeNpcComponent::Ask(const FString& Text)
{
    SendFrame({voxpipe::text(TCHAR_TO_UTF8(*Text), voxpipe::Framing::Msgpack)});
}

void UVoxpipeNpcComponent::StopTalking()
{
    SendFrame({voxpipe::interrupt(voxpipe::Framing::Msgpack)});
}

void UVoxpipeNpcComponent::EndPlay(const EEndPlayReason::Type Reason)
{
    bEnding = true;
    if (UWorld* World = GetWorld()) World->GetTimerManager().ClearTimer(ReconnectTimer);
    Capture.StopStream();
    Capture.CloseStream();
    if (Socket.IsValid() && bReady)
    {
        SendFrame({voxpipe::bye(voxpipe::Framing::Msgpack)});  // the session ends for good
    }
    CloseSocket();
    Super::EndPlay(Reason);
}
