// Sample (not built by the repository's tests): see VoxpipeNpcComponent.h.
#include "VoxpipeNpcComponent.h"

#include "Components/AudioComponent.h"
#include "Sound/SoundWaveProcedural.h"
#include "WebSocketsModule.h"

// nlohmann throws on misuse; Unreal builds without exceptions (Build.cs defines JSON_NOEXCEPTION), so
// the protocol code uses only non-throwing paths (from_msgpack/parse with allow_exceptions=false, find()).
THIRD_PARTY_INCLUDES_START
#include "voxpipe_protocol.hpp"
THIRD_PARTY_INCLUDES_END

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

    Socket = FWebSocketsModule::Get().CreateWebSocket(ServerUrl, TEXT(""));
    Socket->OnConnected().AddLambda([this]()
    {
        voxpipe::HelloOptions Hello;
        Hello.in_rate = MicRate;
        Hello.out_rate = OutRate;
        Hello.aec = bClientHasEchoCancellation;
        Hello.system_prompt = TCHAR_TO_UTF8(*SystemPrompt);
        SendFrame({voxpipe::hello(Hello, voxpipe::Framing::Msgpack)});
    });
    Socket->OnConnectionError().AddLambda([](const FString& Error)
    {
        UE_LOG(LogTemp, Warning, TEXT("voxpipe: connection failed: %s"), *Error);
    });
    Socket->OnClosed().AddLambda([this](int32 Code, const FString& Reason, bool bClean)
    {
        bReady = false;
        UE_LOG(LogTemp, Log, TEXT("voxpipe: closed %d %s"), Code, *Reason);
    });
    // Binary frames arrive here, possibly in fragments (BytesRemaining > 0 until the last one).
    Socket->OnRawMessage().AddUObject(this, &UVoxpipeNpcComponent::OnRawMessage);
    Socket->Connect();
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
        bReady = true;
        StartMicrophone();
    }
    else if (M.type == "audio")
    {
        if (CutTurns.Contains(M.turn)) return;  // the server sends none after `interrupted`; cheap to guard
        if (M.turn != PlayingTurn) { PlayingTurn = M.turn; QueuedBytesOfTurn = 0; }
        const int32 NumBytes = M.pcm.size() * sizeof(int16);
        Wave->QueueAudio(reinterpret_cast<const uint8*>(M.pcm.data()), NumBytes);  // PCM16, host order
        QueuedBytesOfTurn += NumBytes;
    }
    else if (M.type == "interrupted")
    {
        CutTurns.Add(M.turn);
        Wave->ResetAudio();  // flush what is buffered: the player hears the cut at once
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
    else if (M.type == "error")
    {
        UE_LOG(LogTemp, Warning, TEXT("voxpipe %s: %s"), UTF8_TO_TCHAR(M.code.c_str()), UTF8_TO_TCHAR(M.message.c_str()));
    }
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
        // Played = handed to the wave minus what it still holds.
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
    Capture.StopStream();
    Capture.CloseStream();
    if (Socket.IsValid())
    {
        SendFrame({voxpipe::bye(voxpipe::Framing::Msgpack)});
        Socket->Close();
    }
    Super::EndPlay(Reason);
}
